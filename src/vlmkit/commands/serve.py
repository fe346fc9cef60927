"""`vlmkit serve`: a model and its LoRA adapters behind the OpenAI chat API (`vlmkit.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.commands.options import with_options
from vlmkit.errors import VlmkitError
from vlmkit.models.loader import LoadOptions
from vlmkit.serve.options import MediaAccess, ServeLimits
from vlmkit.settings import EncodingSettings


@with_options()
def serve_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model folder or hub id (e.g. Qwen/Qwen2-VL-2B-Instruct).")
    ] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option(help="A vlmkit checkpoint (RUN/checkpoint-N), served with its run's template and settings."),
    ] = None,
    adapters: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PATH of a LoRA checkpoint, served as model NAME (repeatable). Each vlmkit checkpoint "
                     "keeps its own run's pixel limits and system prompt."),
    ] = None,  # fmt: skip
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' on every endpoint but /health (401 otherwise)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Name of the main model in /v1/models. Default: the hub id or folder name.")
    ] = None,
    backend: BackendOptions = BackendOptions(),
    media: MediaAccess = MediaAccess(),
    limits: ServeLimits = ServeLimits(),
    encoding: EncodingSettings = EncodingSettings(),
    loading: LoadOptions = LoadOptions(),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ui: Annotated[
        bool, typer.Option(help="Also serve `vlmkit app`'s page at / (chat, data, and training runs in ./runs).")
    ] = False,
) -> None:
    """Serve a model (and named LoRA adapters) behind the OpenAI chat API: POST /v1/chat/completions
    (text, image_url, video_url; stream, n, max_tokens, temperature, top_p, stop, seed), GET /v1/models,
    GET /health. Requests are batched dynamically; the model's saved template and pixel limits apply."""
    require_serve_extra()
    from vlmkit.serve import parse_adapters, serve

    page = None
    if ui:
        from vlmkit.ui import check_exposure, ui_routes

        check_exposure(host, api_key)
        page = ui_routes(Path("runs"))

    serve(
        model, ckpt=ckpt, adapters=parse_adapters(adapters or []), host=host, port=port, api_key=api_key,
        served_model_name=served_model_name, log_level=log_level, loading=loading, limits=limits, media=media,
        backend=backend, encoding=encoding, ui=page,
    )  # fmt: skip


def require_serve_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise VlmkitError("vlmkit serve needs fastapi and uvicorn: pip install 'vlmkit[serve]'")
