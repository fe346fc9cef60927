"""`vlmkit eval`: answer a dataset with one or more models (or take existing predictions files), score the
answers with the task's metrics and write DIR/LABEL.predictions.jsonl (each row with its scores),
DIR/metrics.json and DIR/report.md; the side-by-side table is printed too.

Inference is `vlmkit infer --input`'s (`vlmkit.infer.batch.run_batch`: same encoding, batching and error rows),
greedy (`vlmkit.eval.evaluate`). A light module: heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.commands.options import with_options
from vlmkit.data.options import DatasetOptions
from vlmkit.models.loader import LoadOptions
from vlmkit.settings import EncodingSettings


@with_options(omit={"backend": ("data_parallel_size",)})
def eval_command(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model folder or hub id to evaluate. Repeat for several (one column each)."),
    ] = None,
    ckpt: Annotated[
        list[Path] | None,
        typer.Option(help="A vlmkit checkpoint (RUN/checkpoint-N) to evaluate, with its run's settings. Repeat for several."),
    ] = None,
    predictions: Annotated[
        list[Path] | None,
        typer.Option(help="Score an existing predictions file (JSONL as `vlmkit infer --input` writes: response, "
                     "references, answers or labels, objects; reference_boxes or labels_objects for grounding; boxes "
            "written as text are read on the 0-1000 grid of the line's image) without a model."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="Dataset to answer, as sft's --dataset (file, folder, hf::org/name). "
                     "Needed with --model/--ckpt."),
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(help="A standard benchmark instead of --dataset, with its hub rows, prompt and metric: docvqa, "
                     "chartqa, textvqa, refcoco, mmmu (see --list-benchmarks). Read from the Hugging Face Hub."),
    ] = None,
    benchmark_path: Annotated[
        Path | None,
        typer.Option(help="A local copy of the --benchmark's rows in its hub schema, instead of the hub: a Parquet "
                     "file, or the folder `hf download REPO --repo-type dataset --local-dir DIR` makes (read with "
                     "the preset's subset and split; DIR@SPLIT for another)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Answer N rows sampled from the dataset or benchmark (seed 42).")] = None,
    list_benchmarks: Annotated[bool, typer.Option("--list-benchmarks", help="List the --benchmark presets and exit.")] = False,
    metric: Annotated[
        str,
        typer.Option(help="auto (picked from the references: boxes -> iou@0.5,iou; OCR -> cer; 3+ short answers -> "
                     "vqa_accuracy,anls; 2 -> anls,exact_match; long ones -> cider,bleu4,rouge_l; letters -> choice) "
                     "or names: exact_match, vqa_accuracy, anls, relaxed_accuracy, cer, wer, ned, bleu4, rouge_l, "
                     "cider, iou, iou@0.5, choice."),
    ] = "auto",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for predictions, metrics.json and report.md (a new one).")
    ] = Path("eval"),
    batch_size: Annotated[int, typer.Option(help="Rows generated together.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens generated per answer.")] = 256,
    reading: DatasetOptions = DatasetOptions(),
    encoding: EncodingSettings = EncodingSettings(),
    loading: LoadOptions = LoadOptions(),
    backend: BackendOptions = BackendOptions(),
) -> None:
    """Score models on a dataset with the task's metrics: one table, side by side (base vs fine-tuned).

    Rows that fail (unreadable, not encodable, generation error) are counted as failed and left out of the
    metrics; replies with no readable box or option letter are scored as misses and counted as unparsed."""
    if list_benchmarks:
        from vlmkit.eval.benchmarks import benchmark_table

        typer.echo(benchmark_table())
        return
    from vlmkit.eval.evaluate import evaluate

    evaluate(
        dataset, models=model or [], ckpts=ckpt or [], predictions=predictions or [], benchmark=benchmark,
        benchmark_path=benchmark_path, limit=limit, metric=metric, output=output, batch_size=batch_size,
        max_new_tokens=max_new_tokens, media_root=reading.media_root, columns=reading.column_map(),
        prompt=reading.prompt, encoding=encoding, loading=loading, backend=backend, echo=typer.echo,
    )  # fmt: skip
