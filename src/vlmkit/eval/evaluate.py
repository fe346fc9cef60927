"""`vlmkit eval` as a Python function: answer a dataset with models or checkpoints (or take predictions
files), score the answers, write DIR/LABEL.predictions.jsonl, DIR/metrics.json and DIR/report.md.

    from vlmkit.eval import evaluate
    summary = evaluate("val.parquet", models=["base"], ckpts=["runs/x/checkpoint-100"], output="eval/ocr")
    summary["models"]["base"]["scores"]["cer"]["value"]

Inference is `vlmkit infer --input`'s (`vlmkit.infer.batch.run_batch`: same encoding, batching and error rows),
greedy.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.errors import VlmkitError
from vlmkit.groups import from_keywords
from vlmkit.models.loader import LoadOptions
from vlmkit.settings import EncodingSettings, encoding_settings


def evaluate(
    dataset: str | None = None,
    *,
    models: Iterable[str | Path] = (),
    ckpts: Iterable[str | Path] = (),
    predictions: Iterable[str | Path] = (),
    benchmark: str | None = None,
    benchmark_path: str | Path | None = None,
    limit: int | None = None,
    metric: str = "auto",
    output: str | Path = "eval",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    media_root: str | Path | None = None,
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
    loading: LoadOptions | None = None,
    backend: BackendOptions | str | None = None,
    encoding: EncodingSettings | None = None,
    echo: Callable[[str], Any] = print,
    **keywords: Any,
) -> dict[str, Any]:
    """Evaluate `models` and `ckpts` on `dataset` (or a `benchmark` preset, `vlmkit.eval.benchmarks`,
    read from `benchmark_path` when given) and/or score `predictions` files; `limit`: N rows sampled.
    Returns what metrics.json holds ({"dataset", "metrics", "metric_choice", "models": {label: {...}}}).
    `echo` gets the lines the command prints (schema, progress, the table). `loading` (`vlmkit.models.loader.LoadOptions`)
    loads each model and checkpoint as `vlmkit.load` does; `encoding` applies to every one, over their saved
    settings. With `backend` (`vlmkit.backends.vllm_args.BackendOptions`) "vllm", models answer through vLLM's offline
    engine (`vlmkit.backends.vllm_offline`). The groups may also be given as their fields, keyword arguments
    (`dtype="fp32"`, `max_pixels=...`, `backend="vllm"`, `tensor_parallel_size=2`).

    Under `torchrun --nproc-per-node N -m vlmkit eval ...` every rank answers a share of the rows
    (`vlmkit.infer.batch.run_batch`); rank 0 alone prints, scores and writes, and the other ranks return {}."""
    from vlmkit.infer.output import is_main_process

    if isinstance(backend, str):  # the backend's name, as before the groups
        backend, keywords = None, {**keywords, "backend": backend}
    loading, keywords = from_keywords(LoadOptions, keywords, loading)
    backend, keywords = from_keywords(BackendOptions, keywords, backend)
    encoding = encoding_settings(encoding, **keywords)
    backend.check()
    models, ckpts = list(models), list(ckpts)
    output = Path(output)
    pairs = [(str(m), None) for m in models] + [(None, Path(c)) for c in ckpts]
    if backend.vllm:
        _refuse_for_vllm(pairs, loading, encoding)
    plan = _plan(dataset, pairs, [Path(p) for p in predictions], benchmark, benchmark_path, limit, metric, output,
                 columns, prompt)  # fmt: skip
    main = is_main_process()
    if not main:
        echo = _silent
    output.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    answered = []
    if pairs:
        loaded = _Loading(batch_size, max_new_tokens, encoding, loading, backend)
        answered = _answer(plan, pairs, benchmark_path, media_root, columns, prompt, output, taken, echo, loaded)
    if not main:  # this rank's share of the rows is answered; rank 0 scores all of them
        return {}
    summary = _score(plan, answered + _given(plan, output, taken), output, echo)
    _stop_if_nothing_scored(summary)
    return summary


def _stop_if_nothing_scored(summary: dict[str, Any]) -> None:
    """One `error:` line (a non-zero exit; the report is written first) when every row of a model failed:
    its column holds no score, and a script must not read it as a finished evaluation."""
    for label, model in summary["models"].items():
        if model["rows"] and model["failed"] == model["rows"]:
            raise VlmkitError(
                f"{label}: all {model['rows']} rows failed, none is scored; first: {model['first_failures'][0]}"
            )


@dataclass(frozen=True)
class _Loading:
    """How each model is loaded and answers."""

    batch_size: int
    max_new_tokens: int
    encoding: EncodingSettings
    loading: LoadOptions
    backend: BackendOptions


@dataclass
class _Plan:
    """What `evaluate` was asked, checked before any model loads."""

    dataset: str | None  # the rows to answer (DATASET#N with --limit); the benchmark's source once read
    predictions: dict[Path, list[dict]]  # given predictions files and their lines
    preset: Any  # the --benchmark preset (`vlmkit.eval.benchmarks.Benchmark`) or None
    limit: int | None
    metrics: list[str] | None  # None: auto, chosen from the first model's rows
    metric_reason: str
    schema: str | None = None  # the dataset's schema line, once read


@dataclass
class _Scored:
    """One predictions file in the output folder to score, with the report's images and questions."""

    label: str
    source: str
    path: Path
    images: list[Any]
    questions: list[str]
    media_folder: Path | None = None  # where a given file's relative image paths start


def _refuse_for_vllm(pairs, loading: LoadOptions, encoding: EncodingSettings) -> None:
    """With the vLLM backend: refuse what vLLM would drop, and a second model (one engine per process)."""
    from vlmkit.backends.vllm_offline import refuse_for_vllm

    if pairs:
        refuse_for_vllm(*pairs[0], loading, encoding)
    if len(pairs) > 1:  # vllm-project/vllm#3281, #21073: a second engine runs out of memory
        raise VlmkitError(
            "--backend vllm answers with one --model/--ckpt per run: vLLM does not free the GPU between "
            "engines in one process; run vlmkit eval once per model, then compare the runs with "
            "vlmkit eval --predictions A.predictions.jsonl --predictions B.predictions.jsonl"
        )


def _plan(dataset, pairs, predictions, benchmark, benchmark_path, limit, metric, output, columns, prompt) -> _Plan:
    """Check the request (one line for each mistake), before any model loads or file is written."""
    from vlmkit.eval.metrics import metric_names
    from vlmkit.eval.rows import read_predictions

    if not pairs and not predictions:
        raise VlmkitError("give --model, --ckpt or --predictions (what to evaluate)")
    preset = _benchmark(benchmark, benchmark_path, dataset, bool(pairs), columns, prompt)
    if limit is not None and limit < 1:
        raise VlmkitError(f"--limit {limit}: give a positive number of rows")
    if pairs and dataset is None and preset is None:
        raise VlmkitError("--model/--ckpt need --dataset or --benchmark (the rows to answer)")
    if limit is not None and dataset is not None:
        if re.search(r"#\d+$", dataset):
            raise VlmkitError(f"--limit {limit} and --dataset {dataset}: give the row count once")
        dataset = f"{dataset}#{limit}"  # sampled as DATASET#N is
    elif limit is not None and preset is None:
        raise VlmkitError("--limit samples the rows of --dataset or --benchmark; give one of them")
    if (output / "metrics.json").exists():
        raise VlmkitError(
            f"--output {output} already holds an evaluation (metrics.json); choose another folder"
        )
    names, reason = (None if metric.strip() == "auto" else metric_names(metric)), "given with --metric"
    if names is None and preset is not None:
        names, reason = metric_names(preset.metric), f"the {preset.name} benchmark's metric"
    _check_eval_extra(names)
    given_lines = {given: read_predictions(given) for given in predictions}  # checked before any work
    return _Plan(dataset, given_lines, preset, limit, names, reason)


def _answer(
    plan, pairs, benchmark_path, media_root, columns, prompt, output, taken, echo, loaded: _Loading
) -> list[_Scored]:
    """Read the rows once, then answer them with each model in turn into OUTPUT/LABEL.predictions.jsonl."""
    from vlmkit.eval.rows import read_dataset
    from vlmkit.eval.run import file_stem, model_label

    if plan.preset is not None:
        from vlmkit.eval.benchmarks import read_benchmark

        rows, line = read_benchmark(plan.preset, _str(benchmark_path), plan.limit, media_root)
        plan.dataset = str(benchmark_path or plan.preset.source)
        echo(line)
    else:
        rows, plan.schema = read_dataset(plan.dataset, media_root, columns, prompt)
        if plan.schema:
            echo(f"{plan.dataset}: {plan.schema}")
    images = [_last_image(sample) for _, sample in rows]
    questions = [_question(sample) for _, sample in rows]
    answered = []
    for model_name, checkpoint in pairs:
        label = model_label(model_name, checkpoint, taken)
        path = output / f"{file_stem(label)}.predictions.jsonl"
        counts = _predict(model_name, checkpoint, plan.dataset, rows, path, loaded)
        echo(f"{label}: answered {counts['ok']} rows ({counts['failed']} failed) -> {path}")
        answered.append(_Scored(label, str(checkpoint or model_name), path, images, questions))
    return answered


def _given(plan: _Plan, output: Path, taken: set[str]) -> list[_Scored]:
    """The given predictions files, copied into `output` (scores are added to the copy; the given file
    stays as it is)."""
    from vlmkit.eval.run import file_stem, model_label

    scored = []
    for given, lines in plan.predictions.items():
        label = model_label(str(given.with_suffix("")), None, taken)
        path = output / f"{file_stem(label)}.predictions.jsonl"
        shutil.copyfile(given, path)
        images = [_image_of_line(line, given.parent) for line in lines]
        questions = [str(line.get("query", "")) for line in lines]
        scored.append(_Scored(label, str(given), path, images, questions, media_folder=given.parent))
    return scored


def _score(plan: _Plan, to_score: list[_Scored], output: Path, echo: Callable[[str], Any]) -> dict[str, Any]:
    """Score every predictions file with the same metrics, print the table, write metrics.json and report.md."""
    from vlmkit.eval.report import text_table, write_report
    from vlmkit.eval.run import score_predictions

    names, reason = plan.metrics, plan.metric_reason
    results = []
    for item in to_score:
        result, chosen, why = score_predictions(
            item.path, names, plan.schema, item.label, item.source, item.media_folder
        )
        if names is None:  # auto: chosen from the first model's rows, then the same for all
            names, reason = chosen, why
        results.append(result)
    echo(f"metrics: {', '.join(names)} ({reason})")
    echo(text_table(results, names))
    for result in results:
        if result.failed:
            print(f"warning: {result.label}: {result.failed} of {result.rows} rows failed and are not scored "
                  f"(first: {result.failures[0]})", file=sys.stderr)  # fmt: skip
        for warning in _score_warnings(result):
            print(f"warning: {result.label}: {warning}", file=sys.stderr)
    summary = {
        "dataset": plan.dataset,
        **({"benchmark": plan.preset.name} if plan.preset is not None else {}),
        "metrics": names,
        "metric_choice": reason,
        "models": {r.label: r.to_json() for r in results},
    }
    (output / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    images = {item.label: item.images for item in to_score}
    questions = {item.label: item.questions for item in to_score}
    report = write_report(output, str(plan.dataset or "predictions"), results, names, reason, images, questions)
    echo(f"wrote {output / 'metrics.json'} and {report}")
    return summary


def _score_warnings(result: Any) -> list[str]:
    """What a metric's value does not say: it scored none of the rows (they are answered the other way:
    boxes or text), or no reply of its rows could be read (the value is a miss on every row)."""
    from vlmkit.eval.metrics import BOX_METRICS

    answered = result.rows - result.failed
    out = []
    for name, score in result.scores.items():
        kind = "boxes" if name in BOX_METRICS else "text"
        if score["scored"] == 0 and answered:
            out.append(f"{name} scored none of the {answered} rows: no row is answered with {kind}")
        elif score["unparsed"] == score["scored"] > 0:
            what = "a box" if kind == "boxes" else "an answer"
            out.append(f"{name}: no reply of the {score['scored']} rows holds {what} vlmkit can read; "
                       f"{name} counts each as a miss")  # fmt: skip
    return out


def _silent(*_: Any) -> None:
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _benchmark(name, path, dataset, answering, columns, prompt):  # -> Benchmark | None
    """The --benchmark preset, checked against the options it replaces."""
    if name is None:
        if path is not None:
            raise VlmkitError("--benchmark-path is a local copy of a --benchmark; name the benchmark too")
        return None
    from vlmkit.eval.benchmarks import get_benchmark

    preset = get_benchmark(name)
    if dataset is not None:
        raise VlmkitError("--benchmark and --dataset both name the rows to answer; give one")
    if columns or prompt is not None:
        raise VlmkitError(
            f"--benchmark {preset.name} sets its own columns and prompt; drop --columns/--prompt"
        )
    if not answering:
        raise VlmkitError("--benchmark needs --model or --ckpt (the models to evaluate)")
    return preset


# the libraries of the `eval` extra each metric needs; the others are plain Python
EXTRA_LIBRARIES = {"anls": ("rapidfuzz",), "cer": ("jiwer", "rapidfuzz"), "wer": ("jiwer", "rapidfuzz"),
                   "ned": ("rapidfuzz",), "bleu4": ("sacrebleu",)}  # fmt: skip


def _check_eval_extra(names: list[str] | None) -> None:
    """Refuse before any model loads when the libraries of the metrics (`None`: auto, any) are missing."""
    import importlib.util

    needed = ("rapidfuzz", "jiwer", "sacrebleu")
    if names is not None:
        needed = tuple(dict.fromkeys(lib for name in names for lib in EXTRA_LIBRARIES.get(name, ())))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise VlmkitError(f"vlmkit eval needs {', '.join(missing)}: pip install 'vlmkit[eval]'")


def _question(sample: Any) -> str:
    """The user text of a prompt with its `<ref-object>`s filled in, for the report."""
    from vlmkit.media.grounding import REF_PLACEHOLDER, parse_objects

    if isinstance(sample, Exception):
        return ""
    text = sample.text("user")
    objects = parse_objects(sample.objects, sample.where) if sample.objects else None
    for ref in objects.refs if objects else []:
        text = text.replace(REF_PLACEHOLDER, ref, 1)
    return text


def _last_image(sample: Any) -> Any:
    if isinstance(sample, Exception):
        return None
    found = sample.media("image")
    return found[-1] if found else None


def _image_of_line(line: dict, folder: Path) -> Any:
    """The image path of a predictions line (`images`: paths relative to the file's folder), or None."""
    found = line.get("images")
    first = found[-1] if isinstance(found, list) and found else found
    if isinstance(first, dict):
        first = first.get("path")
    if not isinstance(first, str):
        return None
    path = Path(first) if Path(first).is_absolute() else folder / first
    return path if path.is_file() else None


def _predict(model, checkpoint, dataset, rows, path, loaded: _Loading) -> dict[str, int]:
    """Load one model (with vLLM when the backend is vllm), answer `rows` through `vlmkit infer`'s batch path
    into `path`, free the model."""
    from vlmkit.backends.transformers_backend import GenerationOptions, load
    from vlmkit.infer.batch import run_batch
    from vlmkit.infer.output import join_ranks

    backend = loaded.backend
    join_ranks(loaded.loading.device, backend.backend)  # under torchrun: before the model loads
    if backend.vllm:
        from vlmkit.backends.vllm_offline import load_vllm

        vlm = load_vllm(model, ckpt=checkpoint, dtype=loaded.loading.dtype, encoding=loaded.encoding,
                        tensor_parallel_size=backend.tensor_parallel_size, vllm_args=backend.vllm_args)  # fmt: skip
    else:
        vlm = load(model, ckpt=checkpoint, loading=loaded.loading, encoding=loaded.encoding)
    options = GenerationOptions(max_new_tokens=loaded.max_new_tokens)  # greedy: scores repeat run to run
    counts = run_batch(
        vlm, dataset, path, options, batch_size=loaded.batch_size, progress=sys.stderr.isatty(), rows=rows
    )
    del vlm
    gc.collect()
    return counts
