"""`vlmkit app`: the page in the browser (`vlmkit.ui`) on the server of `vlmkit serve`, bound to 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmkit.commands.options import with_options
from vlmkit.commands.serve import require_serve_extra
from vlmkit.models.loader import LoadOptions
from vlmkit.serve.options import MediaAccess, ServeLimits
from vlmkit.settings import EncodingSettings


@with_options()
def app_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model folder or hub id to chat with.")
    ] = None,
    ckpt: Annotated[
        Path | None, typer.Option(help="A vlmkit checkpoint (RUN/checkpoint-N) to chat with, with its run's settings.")
    ] = None,
    adapters: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PATH of a LoRA checkpoint, offered as NAME in the page's model choice (repeatable)."),
    ] = None,
    runs: Annotated[
        Path, typer.Option(help="Folder of the training runs the page launches and shows (and eval results).")
    ] = Path("runs"),
    host: Annotated[
        str, typer.Option(help="Address to bind; another than 127.0.0.1 needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require this key (the page asks for it) on everything but the page's files.")
    ] = None,
    media: MediaAccess = MediaAccess(),
    limits: ServeLimits = ServeLimits(),
    encoding: EncodingSettings = EncodingSettings(),
    loading: LoadOptions = LoadOptions(),
) -> None:
    """Open a page in the browser to chat with a model about images (boxes drawn), look at a dataset, launch
    and watch `vlmkit sft` runs and compare eval results. The page is served by `vlmkit serve`'s server (same
    API, key and limits) at http://127.0.0.1:PORT/; training runs go to --runs and are found again after a
    reload or a restart. Datasets and eval results are read inside the current folder and --runs."""
    require_serve_extra()
    from vlmkit.serve import parse_adapters, serve
    from vlmkit.ui import check_exposure, ui_routes

    check_exposure(host, api_key)
    serve(
        model, ckpt=ckpt, adapters=parse_adapters(adapters or []), host=host, port=port, api_key=api_key,
        loading=loading, limits=limits, media=media, encoding=encoding, ui=ui_routes(runs),
    )  # fmt: skip
