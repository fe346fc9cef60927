"""The routes of the page: the static files at `/` and `/ui/static/`, and small JSON endpoints under `/ui/api/`.

Chat goes through the server's own OpenAI API (`POST /v1/chat/completions`, streamed), so the page is also a
client of any `vlmkit serve --ui`. The endpoints here add what the API has no place for:

    GET  /ui/api/info                 the served models, the runs folder, whether the family draws boxes
    POST /ui/api/inspect              a chat request plus its reply -> per image its original and model size
                                      and the tokens the model saw (the family's encoder), per video its
                                      tokens, and the reply's boxes in original pixels (the family's parser)
    GET  /ui/api/data?path=&offset=   a page of a dataset's rows, images as small data: URLs, boxes
    GET  /ui/api/data/check?path=     `vlmkit data check`'s summary and the token lengths
    GET  /ui/api/train/form           the fields of sft's option groups
    POST /ui/api/train                {"values": {field: value}} -> launches `vlmkit sft`, returns the run id
    GET  /ui/api/runs, /ui/api/run?id=  runs from the disk (`vlmkit.ui.runs`); POST /ui/api/run/stop {"id"}
    POST /ui/api/run/resume {"id"}    launches the stopped or failed run again with `--resume RUN_FOLDER`
    POST /ui/api/run/chat {"id", "checkpoint"}  loads a LoRA checkpoint of a run onto the served model as
                                      a new model name (between batches) and returns it, for the chat
    GET  /ui/api/evals, /ui/api/eval?path=  eval folders (metrics.json) and one's scores and first predictions

Everything under /ui/api/ is behind the server's API key and its browser checks (`check_key`); the static
files are not (they hold no data: the page asks for the key). Media in chat requests are fetched under the
server's media policy and limits exactly as /v1/chat/completions fetches them (`request.fetch_sample_media`).
Files are read only inside the app's folder (the working directory it started in) and its runs folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

from vlmkit.errors import VlmkitError
from vlmkit.families.interface import Grounds
from vlmkit.media.grounding import objects_in_reply
from vlmkit.serve.request import APIError, fetch_sample_media, parse, request_sample
from vlmkit.ui import datasets, form
from vlmkit.ui.runs import Runs

STATIC = Path(str(resources.files("vlmkit.ui") / "static"))
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
PREDICTIONS_SHOWN = 20


def ui_routes(runs_dir: Path, folder: Path | None = None) -> Callable:
    """The `extend` hook of `vlmkit.serve.app.create_app` that adds the page; `runs_dir` holds training runs
    and is searched for eval results; files are read inside `folder` (default: the working directory) and
    `runs_dir`."""
    folder = (folder or Path.cwd()).resolve()
    runs = Runs(runs_dir.resolve(), folder)

    def extend(app: FastAPI, models: dict[str, Any], config, check_key: Callable, engine) -> None:
        _add_static(app)
        _add_chat(app, models, config, check_key, runs)
        _add_data(app, models, check_key, [folder, runs.root])
        _add_runs(app, check_key, runs)
        _add_checkpoint_chat(app, models, check_key, runs, engine)

    return extend


def _add_static(app: FastAPI) -> None:
    def static_file(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or path.suffix not in TYPES or not path.is_file():
            raise APIError(404, f"no page file {name!r}", "not_found_error")
        return FileResponse(path, media_type=TYPES[path.suffix], headers=_NO_SCRIPTS_FROM_ELSEWHERE)

    @app.get("/", include_in_schema=False)
    def index():
        return static_file("index.html")

    @app.get("/ui/static/{name}", include_in_schema=False)
    def static(name: str):
        return static_file(name)


# The page runs only its own scripts: a reply's markup could never load one, even if the renderer had a hole.
_NO_SCRIPTS_FROM_ELSEWHERE = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _add_chat(app: FastAPI, models: dict[str, Any], config, check_key: Callable, runs: Runs) -> None:
    @app.get("/ui/api/info")
    def info(request: Request) -> dict[str, Any]:
        check_key(request)
        return {
            "models": [
                {
                    "name": m.name,
                    "adapter": m.parent is not None,
                    "grounding": m.template.box_format is not None,
                    "video": m.template.video_sampling is not None,
                }
                for m in models.values()
            ],
            "runs": str(runs.root),
            "max_request_bytes": config.max_request_bytes,
            "max_image_pixels": config.policy.max_image_pixels,
        }

    @app.post("/ui/api/inspect")
    async def inspect(request: Request) -> dict[str, Any]:
        check_key(request)
        body = await _json_body(request, config.max_request_bytes)
        reply = body.pop("reply", "")
        chat = parse(json.dumps(body).encode())
        served = models.get(chat.model or next(iter(models)))
        if served is None:
            raise APIError(404, f"model {chat.model!r} is not served here", param="model", code="model_not_found")
        from anyio import to_thread

        return await to_thread.run_sync(_inspect, chat, served.template, config, str(reply))


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body is over the limit of {limit} bytes (--max-request-bytes)")
    body = await request.body()
    if len(body) > limit:
        raise APIError(413, f"request body is over the limit of {limit} bytes (--max-request-bytes)")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


def _inspect(chat, template, config, reply: str) -> dict[str, Any]:
    """Per image its original and model size and the tokens the model saw, per video its tokens, and the
    reply's boxes: from the family's own `encode` of the request, as the server encoded it for the reply."""
    try:
        sample = fetch_sample_media(request_sample(chat.messages), template, config)
        encoded = template.encode(sample, add_generation_prompt=True)
        boxes = objects_in_reply(template, sample, reply)
    except VlmkitError as e:
        raise APIError(400, str(e), param="messages") from None
    ids = encoded["input_ids"].tolist()
    count = len(sample.media("image"))
    sizes = template.image_sizes(sample) if isinstance(template, Grounds) else encoded.get("image_sizes")
    if not isinstance(sizes, list) or len(sizes) != count:  # a family that lists no (original, model) sizes
        sizes = [(None, None)] * count
    image_tokens = media_tokens(ids, template.image_token_id, count)
    video_tokens = media_tokens(ids, template.video_token_id, len(sample.media("video")))
    images = [
        {"original": original and list(original), "model": model and list(model), "tokens": tokens}
        for (original, model), tokens in zip(sizes, image_tokens, strict=True)
    ]
    return {"images": images, "videos": [{"tokens": tokens} for tokens in video_tokens], "boxes": boxes}


def media_tokens(ids: list[int], token_id: int | None, count: int) -> list[int | None]:
    """The length of each run of `token_id` in `ids`: the tokens each of `count` images (or videos) became.
    None for each when the runs do not match the media one to one (a family that expands no tokens of its
    own, or writes one image as several runs): the page then shows no count rather than a wrong one."""
    runs: list[int] = []
    for previous, token in zip([None, *ids], ids, strict=False):
        if token_id is not None and token == token_id:
            if previous == token_id:
                runs[-1] += 1
            else:
                runs.append(1)
    return runs if len(runs) == count else [None] * count


def _inside(path_text: str, roots: list[Path]) -> Path:
    """`path_text` (relative to the first root) resolved, if it lies inside one of `roots`; else 403."""
    if not path_text:
        raise APIError(400, "give a dataset path", param="path")
    path = (roots[0] / path_text).resolve()
    if not any(path == root or root in path.parents for root in roots):
        raise APIError(
            403, f"{path_text}: outside the app's folders ({', '.join(map(str, roots))}); copy it there", param="path"
        )
    if not path.exists():
        raise APIError(404, f"{path_text}: no such file or folder", "not_found_error", param="path")
    return path


def _add_data(app: FastAPI, models: dict[str, Any], check_key: Callable, roots: list[Path]) -> None:
    template = next(iter(models.values())).template

    @app.get("/ui/api/data")
    def data(request: Request, path: str = "", offset: int = 0, limit: int = 10) -> dict[str, Any]:
        check_key(request)
        try:
            return datasets.read_page(_inside(path, roots), max(0, offset), min(max(1, limit), 50), template)
        except VlmkitError as e:
            raise APIError(400, str(e), param="path") from None

    @app.get("/ui/api/data/check")
    def data_check(request: Request, path: str = "", max_length: int = 2048) -> dict[str, Any]:
        check_key(request)
        try:
            return datasets.check_summary(_inside(path, roots), template, max_length)
        except VlmkitError as e:
            raise APIError(400, str(e), param="path") from None

    @app.get("/ui/api/evals")
    def evals(request: Request) -> dict[str, Any]:
        check_key(request)
        found = sorted({p.parent for root in roots for p in root.rglob("metrics.json")})
        return {"evals": [_relative(p, roots) for p in found]}

    @app.get("/ui/api/eval")
    def eval_result(request: Request, path: str = "") -> dict[str, Any]:
        check_key(request)
        folder = _inside(path, roots)
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise APIError(400, f"{path}/metrics.json: not readable ({e})", param="path") from None
        predictions = {label: _predictions(folder, result) for label, result in metrics.get("models", {}).items()}
        return {"metrics": metrics, "predictions": predictions}


def _relative(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if path == root or root in path.parents:
            return path.relative_to(roots[0]).as_posix() if root == roots[0] else str(path)
    return str(path)


def _predictions(folder: Path, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The first prediction rows of one model: response, references, scores and the first image."""
    path = folder / str(result.get("predictions", ""))
    if not path.is_file() or path.parent != folder:
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) == PREDICTIONS_SHOWN:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            images = row.get("images", row.get("image")) or []
            images = [images] if isinstance(images, str) else images
            first = images[0] if images else None
            out.append(
                {
                    "response": row.get("response"),
                    "reference": row.get("references", row.get("labels")),
                    "scores": row.get("scores", {}),
                    "error": row.get("error"),
                    "image": datasets.thumbnail(folder / first, "image") if isinstance(first, str) else None,
                }
            )
    return out


def _add_runs(app: FastAPI, check_key: Callable, runs: Runs) -> None:
    @app.get("/ui/api/train/form")
    def train_form(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"fields": form.form_fields(), "runs": str(runs.root)}

    @app.post("/ui/api/train")
    async def train(request: Request) -> dict[str, Any]:
        check_key(request)
        body = await _json_body(request, 2**20)
        try:
            args = form.sft_arguments(body.get("values", {}))
        except VlmkitError as e:
            raise APIError(400, str(e), param="values") from None
        return {"id": runs.launch(args), "command": ["vlmkit", "sft", *args]}

    @app.get("/ui/api/runs")
    def list_runs(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"runs": [_summary(run) for run in runs.list()]}

    @app.get("/ui/api/run")
    def run(request: Request, id: str = "") -> dict[str, Any]:
        check_key(request)
        try:
            return runs.find(id)
        except VlmkitError as e:
            raise APIError(404, str(e), "not_found_error", param="id") from None

    @app.post("/ui/api/run/stop")
    async def stop(request: Request) -> dict[str, Any]:
        check_key(request)
        body = await _json_body(request, 4096)
        try:
            runs.stop(str(body.get("id", "")))
        except VlmkitError as e:
            raise APIError(400, str(e), param="id") from None
        return {"stopped": True}

    @app.post("/ui/api/run/resume")
    async def resume(request: Request) -> dict[str, Any]:
        check_key(request)
        body = await _json_body(request, 4096)
        try:
            command = runs.resume(str(body.get("id", "")))
        except VlmkitError as e:
            raise APIError(400, str(e), param="id") from None
        return {"resumed": True, "command": ["vlmkit", "sft", *command]}


def _add_checkpoint_chat(app: FastAPI, models: dict[str, Any], check_key: Callable, runs: Runs, engine) -> None:
    @app.post("/ui/api/run/chat")
    async def chat_with_checkpoint(request: Request) -> dict[str, Any]:
        check_key(request)
        body = await _json_body(request, 4096)
        from anyio import to_thread

        try:
            run = runs.find(str(body.get("id", "")))
            name = await to_thread.run_sync(
                load_checkpoint, models, engine, run, str(body.get("checkpoint", ""))
            )
        except VlmkitError as e:
            raise APIError(400, str(e), param="checkpoint") from None
        return {"model": name}


def load_checkpoint(models: dict[str, Any], engine, run: dict[str, Any], checkpoint: str) -> str:
    """Serve `checkpoint` of `run` (a LoRA checkpoint of the served model) as `<run folder>/<checkpoint>`: loaded
    onto the model between batches, beside the models already served; returns the name. A full checkpoint, or
    one of a run on another model, is refused (it would need its own server: `vlmkit app --ckpt`)."""
    from vlmkit.serve.server import attach_adapter, parse_adapters

    if checkpoint not in run["checkpoints"]:
        raise VlmkitError(f"run {run['id']}: no checkpoint {checkpoint!r} (it has: {', '.join(run['checkpoints'])})")
    folder = Path(run["folder"]) / checkpoint
    name = f"{folder.parent.name}/{checkpoint}"
    if name in models:
        return name
    main_name, main = next(iter(models.items()))
    trained_on = json.loads((folder.parent / "args.json").read_text()).get("model")
    if not (folder / "adapter_config.json").is_file() or not _same_model(trained_on, main.root):
        raise VlmkitError(
            f"{folder}: only a LoRA checkpoint of the served model ({main_name}) loads beside it; this run trained "
            f"{trained_on} ({'LoRA' if (folder / 'adapter_config.json').is_file() else 'full'}): chat with it "
            f"in its own app, `vlmkit app --ckpt {folder}`"
        )
    parse_adapters([f"{name}={folder}"])  # an incomplete checkpoint is refused as --adapters refuses it

    def attach() -> None:
        if name not in models:  # a second click that waited for the lock finds it loaded
            peft_name = f"page_{len(engine.adapters)}"
            models[name] = attach_adapter(engine.vlm, name, folder, peft_name, main_name)
            engine.adapters[name] = peft_name

    engine.exclusive(attach)
    return name


def _same_model(trained_on: str | None, served_root: str) -> bool:
    if not trained_on:
        return False
    return trained_on == served_root or Path(trained_on).expanduser().resolve() == Path(served_root).resolve()


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    last = run["points"][-1] if run["points"] else {}
    return {k: run[k] for k in ("id", "folder", "state", "error", "max_steps")} | {"step": last.get("step", 0)}


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse the page on a non-loopback address without an API key: anyone who reaches it could run the model,
    read the app's folder and launch training."""
    from vlmkit.serve.app import is_loopback_name

    if api_key is None and not is_loopback_name(host):
        raise VlmkitError(
            f"--host {host} without --api-key would let anyone on the network use the page (chat, data, training); "
            "give --api-key KEY, or keep --host 127.0.0.1"
        )
