"""`vlmkit eval`: answer a dataset with one or more models (or take existing predictions files), score the
answers with the task's metrics and write DIR/LABEL.predictions.jsonl (each row with its scores),
DIR/metrics.json and DIR/report.md; the side-by-side table is printed too.

Inference is `vlmkit infer --input`'s (`vlmkit.infer.run_batch`: same encoding, batching and error rows),
greedy. A light module: heavy imports happen inside the command.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmkit.errors import VlmkitError
from vlmkit.options import (
    AttnImpl,
    Columns,
    Device,
    DType,
    MaxPixels,
    MinPixels,
    Prompt,
    System,
    TrustRemoteCode,
)


def eval_command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Model folder or hub id to evaluate. Repeat for several (one column each)."
        ),
    ] = None,
    ckpt: Annotated[
        list[Path] | None,
        typer.Option(
            help="A vlmkit checkpoint (RUN/checkpoint-N) to evaluate, with its run's settings. Repeat for several."
        ),
    ] = None,
    predictions: Annotated[
        list[Path] | None,
        typer.Option(
            help="Score an existing predictions file (JSONL as `vlmkit infer --input` writes: response, "
            "references or labels, objects; reference_boxes or labels_objects for grounding) without a model."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help="Dataset to answer, as sft's --dataset (file, folder, hf::org/name). Needed with --model/--ckpt.",
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            help="auto (picked from the references: boxes -> iou@0.5,iou; OCR -> cer; several short answers -> "
            "vqa_accuracy,anls; long ones -> cider,bleu4,rouge_l; letters -> choice) or names: exact_match, "
            "vqa_accuracy, anls, relaxed_accuracy, cer, wer, ned, bleu4, rouge_l, cider, iou, iou@0.5, choice."
        ),
    ] = "auto",
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Folder for predictions, metrics.json and report.md (a new one)."
        ),
    ] = Path("eval"),
    batch_size: Annotated[int, typer.Option(help="Rows generated together.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens generated per answer.")] = 256,
    media_root: Annotated[
        Path | None, typer.Option(help="Extra folder to resolve relative image paths against.")
    ] = None,
    columns: Columns = None,
    prompt: Prompt = None,
    system: System = None,
    min_pixels: MinPixels = None,
    max_pixels: MaxPixels = None,
    dtype: DType = "auto",
    device: Device = "auto",
    attn_impl: AttnImpl = "sdpa",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Score models on a dataset with the task's metrics: one table, side by side (base vs fine-tuned).

    Rows that fail (unreadable, not encodable, generation error) are counted as failed and left out of the
    metrics; replies with no readable box or option letter are scored as misses and counted as unparsed."""
    from vlmkit.data.columns import parse_columns
    from vlmkit.eval.metrics import metric_names
    from vlmkit.eval.report import text_table, write_report
    from vlmkit.eval.rows import read_predictions
    from vlmkit.eval.run import file_stem, model_label, score_predictions

    models: list[tuple[str | None, Path | None]] = [(m, None) for m in model or []] + [
        (None, c) for c in ckpt or []
    ]
    if not models and not predictions:
        raise VlmkitError("give --model, --ckpt or --predictions (what to evaluate)")
    if models and dataset is None:
        raise VlmkitError("--model/--ckpt need --dataset (the rows to answer)")
    if (output / "metrics.json").exists():
        raise VlmkitError(
            f"--output {output} already holds an evaluation (metrics.json); choose another folder"
        )
    names = None if metric.strip() == "auto" else metric_names(metric)
    _check_eval_extra()
    given_lines = {given: read_predictions(given) for given in predictions or []}  # checked before any work
    output.mkdir(parents=True, exist_ok=True)

    taken: set[str] = set()
    to_score: list[tuple[str, str, Path]] = []  # (label, source, predictions file in output)
    images: dict[str, list[Any]] = {}
    questions: dict[str, list[str]] = {}
    schema = None
    if models:
        from vlmkit.eval.rows import read_dataset

        rows, schema = read_dataset(dataset, media_root, parse_columns(columns), prompt)
        if schema:
            typer.echo(f"{dataset}: {schema}")
        row_images = [_last_image(sample) for _, sample in rows]
        row_questions = [_question(sample) for _, sample in rows]
        for model_name, checkpoint in models:
            label = model_label(model_name, checkpoint, taken)
            path = output / f"{file_stem(label)}.predictions.jsonl"
            counts = _predict(model_name, checkpoint, dataset, rows, path, batch_size, max_new_tokens, system,
                              min_pixels, max_pixels, dtype, device, attn_impl, trust_remote_code)  # fmt: skip
            typer.echo(f"{label}: answered {counts['ok']} rows ({counts['failed']} failed) -> {path}")
            to_score.append((label, str(checkpoint or model_name), path))
            images[label], questions[label] = row_images, row_questions
    for given in predictions or []:
        label = model_label(str(given.with_suffix("")), None, taken)
        path = output / f"{file_stem(label)}.predictions.jsonl"
        shutil.copyfile(given, path)  # scores are added to the copy; the given file stays as it is
        to_score.append((label, str(given), path))
        lines = given_lines[given]
        images[label] = [_image_of_line(line, given.parent) for line in lines]
        questions[label] = [str(line.get("query", "")) for line in lines]

    results, reason = [], "given with --metric"
    for label, source, path in to_score:
        result, chosen, why = score_predictions(path, names, schema, label, source)
        if names is None:  # auto: chosen from the first model's rows, then the same for all
            names, reason = chosen, why
        results.append(result)
    typer.echo(f"metrics: {', '.join(names)} ({reason})")
    table = text_table(results, names)
    typer.echo(table)
    for result in results:
        if result.failed:
            typer.echo(f"warning: {result.label}: {result.failed} of {result.rows} rows failed and are not scored "
                       f"(first: {result.failures[0]})", err=True)  # fmt: skip
    summary = {
        "dataset": dataset,
        "metrics": names,
        "metric_choice": reason,
        "models": {r.label: r.to_json() for r in results},
    }
    (output / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    report = write_report(output, str(dataset or "predictions"), results, names, reason, images, questions)
    typer.echo(f"wrote {output / 'metrics.json'} and {report}")


def _check_eval_extra() -> None:
    """Refuse before any model loads when the metric libraries are missing."""
    import importlib.util

    missing = [name for name in ("rapidfuzz", "jiwer", "sacrebleu") if importlib.util.find_spec(name) is None]
    if missing:
        raise VlmkitError(f"vlmkit eval needs {', '.join(missing)}: pip install 'vlmkit[eval]'")


def _question(sample: Any) -> str:
    """The user text of a prompt with its `<ref-object>`s filled in, for the report."""
    from vlmkit.grounding import REF_PLACEHOLDER, parse_objects

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


def _predict(model, checkpoint, dataset, rows, path, batch_size, max_new_tokens, system, min_pixels, max_pixels,
             dtype, device, attn_impl, trust_remote_code) -> dict[str, int]:  # fmt: skip
    """Load one model, answer `rows` through `vlmkit infer`'s batch path into `path`, free the model."""
    from vlmkit.infer import run_batch
    from vlmkit.model import GenerationOptions, load

    vlm = load(model, ckpt=checkpoint, dtype=dtype, device=device, attn_impl=attn_impl, min_pixels=min_pixels,
               max_pixels=max_pixels, system=system, trust_remote_code=trust_remote_code)  # fmt: skip
    options = GenerationOptions(max_new_tokens=max_new_tokens)  # greedy: scores repeat run to run
    counts = run_batch(
        vlm, dataset, path, options, batch_size=batch_size, progress=sys.stderr.isatty(), rows=rows
    )
    del vlm
    gc.collect()
    return counts
