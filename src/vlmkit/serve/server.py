"""Load the model and its named LoRA adapters, and run the server (`vlmkit serve`).

    from vlmkit.serve import serve
    serve(ckpt="output/.../checkpoint-500", adapters={"latex": "runs/latex/checkpoint-200"}, port=8000)

Each served name encodes with its own saved settings: an adapter that is a vlmkit checkpoint
brings the pixel limits and system prompt of its run (vlmkit.json), exactly as
`vlmkit infer --ckpt` would use them; options given to `serve` override them for every name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmkit.backends.transformers_backend import VLM, load
from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.errors import VlmkitError
from vlmkit.groups import from_keywords
from vlmkit.models.loader import CHECKPOINT_RE, LoadOptions, is_complete, load_template
from vlmkit.serve.options import MediaAccess, ServeLimits, media_policy
from vlmkit.settings import EncodingSettings, encoding_settings

# The default --max-prompt-chars per token of --max-prompt-tokens: text runs 3-5 characters a token, code with
# long runs of spaces rarely more than 8; a longer text is refused before it is tokenized (seconds of CPU a MB).
PROMPT_CHARS_PER_TOKEN = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def parse_adapters(values: list[str]) -> dict[str, Path]:
    """`["name=path", ...]` (the --adapters option) -> {name: path}, each checked."""
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise VlmkitError(f"--adapters {value}: expected NAME=PATH (NAME of letters, digits, . _ - : /)")
        if name in adapters:
            raise VlmkitError(f"--adapters: the name {name!r} is given twice")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise VlmkitError(f"--adapters {value}: no such folder")
        if CHECKPOINT_RE.match(folder.name) and not is_complete(folder):
            raise VlmkitError(
                f"--adapters {value}: this checkpoint is incomplete (its save was interrupted); use an earlier one"
            )
        if not (folder / "adapter_config.json").is_file():
            raise VlmkitError(
                f"--adapters {value}: {folder} has no adapter_config.json; give a LoRA checkpoint "
                "(a full checkpoint is served with --model or --ckpt)"
            )
        adapters[name] = folder
    return adapters


def served_name(model: str | None, ckpt: str | Path | None) -> str:
    """The default name of the main model: a hub id as given, else the folder's name."""
    if ckpt is not None:
        path = Path(ckpt)
        return f"{path.parent.name}/{path.name}"
    assert model is not None
    return model if not Path(model).expanduser().exists() else Path(model).expanduser().resolve().name


def load_served(
    vlm: VLM,
    main_name: str,
    adapters: dict[str, Path],
    encoding: EncodingSettings | None = None,
) -> tuple[dict[str, Any], dict[str | None, str | None]]:
    """Attach `adapters` to `vlm.model` as named peft adapters.

    Returns ({served name: ServedModel}, {served name: peft adapter name or None for the base}).
    """
    from peft import PeftModel

    from vlmkit.serve.app import ServedModel

    models = {main_name: ServedModel(main_name, vlm.template, str(vlm.path))}
    main_peft = "default" if isinstance(vlm.model, PeftModel) else None  # --ckpt of a LoRA run
    peft_names: dict[str | None, str | None] = {main_name: main_peft}
    for i, (name, folder) in enumerate(adapters.items()):
        if name in models:
            raise VlmkitError(f"--adapters {name}={folder}: {name!r} is already the main model's name")
        models[name] = attach_adapter(vlm, name, folder, f"served_{i}", main_name, encoding)
        peft_names[name] = f"served_{i}"
    return models, peft_names


def attach_adapter(
    vlm: VLM, name: str, folder: Path, peft_name: str, main_name: str, encoding: EncodingSettings | None = None
) -> Any:
    """Load the LoRA checkpoint `folder` onto `vlm.model` as the peft adapter `peft_name`; returns its
    `ServedModel` (a vlmkit checkpoint encodes with its run's own settings)."""
    from peft import PeftModel

    from vlmkit.models.loader import peft_quietly
    from vlmkit.serve.app import ServedModel

    try:
        with peft_quietly():
            if isinstance(vlm.model, PeftModel):
                vlm.model.load_adapter(str(folder), adapter_name=peft_name)
            else:
                vlm.model = PeftModel.from_pretrained(vlm.model, str(folder), adapter_name=peft_name)
    except Exception as e:  # peft raises many types for an adapter that does not fit the model
        raise VlmkitError(
            f"--adapters {name}={folder}: cannot load it onto {main_name} ({type(e).__name__}: {e})"
        ) from None
    vlm.model.eval()
    template = vlm.template
    if (folder / "preprocessor_config.json").is_file():  # a vlmkit checkpoint: its run's settings
        template = load_template(folder, vlm.tokenizer, vlm.family, encoding)
    return ServedModel(name, template, str(folder), parent=main_name)


def serve(
    model: str | None = None,
    *,
    ckpt: str | Path | None = None,
    adapters: dict[str, Path] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    log_level: str = "info",
    loading: LoadOptions | None = None,
    limits: ServeLimits | None = None,
    media: MediaAccess | None = None,
    backend: BackendOptions | str | None = None,
    encoding: EncodingSettings | None = None,
    ui: Callable | None = None,
    **keywords: Any,
) -> None:
    """Load the model and serve it until interrupted (see `vlmkit serve --help` for the options). The option
    groups (`loading`, `limits`, `media`, `backend`: `vlmkit.serve.options`, `vlmkit.models.loader.LoadOptions`,
    `vlmkit.backends.vllm_args.BackendOptions`) may also be given as their fields, keyword arguments (`max_tokens=256`,
    `backend="vllm"`, `vllm_args=[...]`). `encoding` (or its fields as keyword arguments) applies to the model
    and to every adapter that is a vlmkit checkpoint, over their saved settings. `ui`: routes added to the
    app (`create_app`'s `extend`; `vlmkit app` and `serve --ui` pass the page's, `vlmkit.ui.ui_routes`)."""
    if isinstance(backend, str):  # the backend's name, as before the groups
        backend, keywords = None, {**keywords, "backend": backend}
    loading, keywords = from_keywords(LoadOptions, keywords, loading)
    limits, keywords = from_keywords(ServeLimits, keywords, limits)
    media, keywords = from_keywords(MediaAccess, keywords, media)
    backend, keywords = from_keywords(BackendOptions, keywords, backend)
    encoding = encoding_settings(encoding, **keywords)
    if api_key is not None and not api_key.strip():
        raise VlmkitError(
            "--api-key is empty, which would protect nothing; give a key, or leave the option out"
        )
    if not 1 <= port <= 65535:
        raise VlmkitError(f"--port {port}: choose a port from 1 to 65535")
    for group in (media, limits, backend, loading):
        group.check()
    _check_port_free(host, port)  # before loading the model: a busy port is found in a second, not minutes
    adapters = adapters or {}
    if backend.vllm and ui is not None:
        raise VlmkitError("--ui is for --backend transformers (vLLM runs its own server)")
    if backend.vllm:
        _refuse_for_vllm(model, ckpt, loading, encoding)
        name = served_model_name or served_name(model, ckpt)
        _serve_vllm(model, ckpt, adapters, encoding, name, host, port, api_key, media, loading.dtype, backend)
        return
    vlm = load(model, ckpt=ckpt, loading=loading, encoding=encoding)
    if loading.device_map is not None:
        from vlmkit.models.placement import describe

        print(describe(vlm.model), flush=True)
    # Adapters that are vlmkit checkpoints load their own template with the same explicit options.
    models, peft_names = load_served(vlm, served_model_name or served_name(model, ckpt), adapters, encoding)
    _run_server(vlm, models, peft_names, host, port, api_key, log_level, limits, media, ui)


def _run_server(vlm, models, peft_names, host, port, api_key, log_level, limits, media, ui=None) -> None:
    """Serve the loaded models with uvicorn until interrupted."""
    import uvicorn

    from vlmkit.serve.app import ServerConfig, create_app, is_loopback_name
    from vlmkit.serve.engine import Engine
    from vlmkit.serve.protocol import SHUTDOWN_GRACE, StoppingServer, timed_protocol

    prompt_tokens = limits.max_prompt_tokens or context_length(vlm)
    config = ServerConfig(
        api_key=api_key,
        max_request_bytes=limits.max_request_bytes,
        max_tokens=limits.max_tokens,
        max_tokens_limit=max(limits.max_tokens, 4096),
        max_total_tokens=limits.max_total_tokens,
        max_prompt_tokens=prompt_tokens,
        max_prompt_chars=limits.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * prompt_tokens,
        max_video_frames=limits.max_video_frames,
        policy=media_policy(limits, media),
        loopback_only=api_key is None and is_loopback_name(host),
    )
    # Pillow refuses images over twice its own limit before vlmkit reads their size: keep that above ours, so
    # --max-image-pixels is the limit a client meets and the one its 413 names
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_image_pixels)
    server: uvicorn.Server | None = None

    def engine_failed() -> None:  # from the engine thread: stop serving, so the process exits non-zero
        if server is not None:
            server.should_exit = True

    engine = Engine(vlm, peft_names, max_batch_rows=limits.max_batch_size, on_failure=engine_failed)
    app = create_app(engine, models, config, extend=ui)
    logging.getLogger("vlmkit.serve").setLevel(log_level.upper())
    server = StoppingServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            server_header=False,
            # deadlines for request headers and bodies, connections per client, malformed requests in OpenAI's shape
            http=timed_protocol(limits.body_timeout, limits.max_connections_per_client),
            timeout_keep_alive=5,  # idle keep-alive connections are closed (they hold file descriptors)
            h11_max_incomplete_event_size=64 * 1024,  # request line and headers
            limit_concurrency=_connection_limit(),
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        ),
        shut_down=engine.shut_down,
    )
    print(f"serving {', '.join(models)} on http://{host}:{port}/v1", flush=True)
    if ui is not None:
        print(f"open the page: http://{host}:{port}/", flush=True)
    server.run()
    if engine.failure is not None:
        raise VlmkitError(f"the generation thread stopped ({engine.failure}); the server exited, restart it")


def _refuse_for_vllm(model, ckpt, loading: LoadOptions, encoding: EncodingSettings) -> None:
    """What `vllm serve` would drop: the placement over devices, the encoding settings the family does not pass
    on (`vlmkit.backends.vllm_args.not_passed_to_vllm`), remote code."""
    from vlmkit.backends.vllm_args import not_passed_to_vllm
    from vlmkit.models.loader import resolve_model

    if loading.device_map is not None:
        raise VlmkitError("--device-map is for --backend transformers; vLLM spreads a model over GPUs itself")
    encoding_given = [k for k in encoding.given() if k != "system"]  # the family is needed only for these
    given = not_passed_to_vllm(resolve_model(model, ckpt).family, encoding) if encoding_given else []
    if given or loading.trust_remote_code:
        names = ", ".join("--" + k.replace("_", "-") for k in given + ["trust_remote_code"] * loading.trust_remote_code)
        raise VlmkitError(f"{names}: not passed on to vLLM yet; serve with --backend transformers")


def _check_port_free(host: str, port: int) -> None:
    """Bind `host:port` for a moment, as uvicorn will (SO_REUSEADDR, so a port in TIME_WAIT is free)."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except socket.gaierror as e:
        raise VlmkitError(f"--host {host}: cannot listen there ({e.strerror}); give an address of this machine") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise VlmkitError(f"port {port} on {host} is already in use (another server?); choose another with --port") from None
        if e.errno == errno.EACCES:
            raise VlmkitError(f"port {port} needs administrator rights; choose one above 1023 with --port") from None
        raise VlmkitError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None


def _connection_limit() -> int:
    """Connections served at once (503 beyond, /health excepted): half the open-files limit, so the model's
    files can still be opened, at most 1000. The soft open-files limit is raised to the hard one first (up to
    8192, as Go programs do), since a default of 256 or 1024 would let a few clients fill the server."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return max(32, min(1000, soft // 2)) if soft != resource.RLIM_INFINITY else 1000


def context_length(vlm: VLM) -> int:
    """The language model's context length from its config (32768 if the config does not say)."""
    config = vlm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "max_position_embeddings", None) or 32768)


def _serve_vllm(model, ckpt, adapters, encoding, name, host, port, api_key, media: MediaAccess, dtype,
                backend: BackendOptions) -> None:  # fmt: skip
    import shlex
    import sys
    import tempfile

    from vlmkit.backends.vllm_args import plan_vllm, run_vllm, serve_command_line

    plan = plan_vllm(
        model,
        ckpt,
        adapters,
        encoding,
        name,
        dtype=dtype,
        tensor_parallel_size=backend.tensor_parallel_size,
        data_parallel_size=backend.data_parallel_size,
        vllm_args=backend.vllm_args,
    )
    with tempfile.TemporaryDirectory(prefix="vlmkit-vllm-") as template_dir:  # removed however vLLM ends
        args = serve_command_line(
            plan,
            served_model_name=name,
            template_dir=Path(template_dir),
            host=host,
            port=port,
            api_key=api_key,
            allow_media_dir=media.allow_media_dir,
        )
        print(
            "warning: with --backend vllm, vLLM fetches media URLs itself: --allow-private-urls, --max-media-bytes, "
            "--media-timeout, --max-image-pixels and --max-request-bytes do not apply",
            file=sys.stderr,
        )
        print(f"running: {shlex.join(args)}", flush=True)
        code = run_vllm(args)
    if code:
        raise VlmkitError(f"vllm serve exited with code {code} (its own messages are above)")
