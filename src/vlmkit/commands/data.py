"""`vlmkit data check` and `vlmkit data preview`: look at a dataset the way training will.

Both load only the tokenizer and the family template of a model folder (no weights), so
they answer in seconds on any machine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vlmkit.commands.options import with_options
from vlmkit.data.options import DatasetOptions
from vlmkit.errors import DataError, VlmkitError
from vlmkit.settings import EncodingSettings

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

app = typer.Typer(
    help="Check datasets, preview rows exactly as the model sees them, and encode them into the encode cache.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# `--dataset a.json b.jsonl#100`: the values after the first one arrive as extra arguments.
MANY_DATASETS = {"allow_extra_args": True}

Model = Annotated[
    str,
    typer.Option("--model", "-m", help="Model folder (or hub id) whose tokenizer and template to use."),
]
Datasets = Annotated[
    list[str],
    typer.Option(
        "--dataset",
        "-d",
        help="Dataset(s): .json/.jsonl (any supported format), .parquet, .arrow, .csv/.tsv, a folder of "
        "shards or save_to_disk, or a hub id hf::org/name[:subset][@split] (ms:: for ModelScope); "
        "SOURCE#N samples N rows. Repeat the flag or list several after one --dataset.",
    ),
]


def _datasets(ctx: typer.Context, dataset: list[str]) -> list[str]:
    for extra in ctx.args:
        if extra.startswith("-"):
            raise VlmkitError(f"unknown option {extra}; see --help")
    return [*dataset, *ctx.args]


def _load(ctx: typer.Context, dataset: list[str], reading: DatasetOptions):
    """The dataset(s) of the command line; prints the column schema of each source that has one."""
    from vlmkit.data import load_datasets

    data = load_datasets(_datasets(ctx, dataset), media_root=reading.media_root, columns=reading.column_map(),
                         prompt=reading.prompt)  # fmt: skip
    for source, line in data.schemas.items():
        typer.echo(f"{source}: {line}")
    return data


def _rows_to_check(ctx: typer.Context, dataset: list[str], reading: DatasetOptions) -> Iterator[Any]:
    """The rows of the command line's dataset(s) in file order, read as they are checked (a stream, as
    `sft --streaming` reads: memory does not grow with the row count, and a Parquet file is not copied into
    `datasets`' Arrow cache first). A source with #N is loaded as training loads it: its N rows are drawn at
    random, which needs the row count. Prints the column schema of each source that has one."""
    from vlmkit.data.sources import parse_source
    from vlmkit.data.streaming import open_stream

    specs = _datasets(ctx, dataset)
    if any(parse_source(spec).count is not None for spec in specs):
        data = _load(ctx, dataset, reading)
        return _in_file_order(data)
    stream = open_stream(specs, reading.media_root, columns=reading.column_map(), prompt=reading.prompt)
    for source, line in stream.schemas.items():
        typer.echo(f"{source}: {line}")
    return (row for _, row in stream.rows())


def _in_file_order(data: Any) -> Iterator[Any]:
    """The rows of a loaded `Dataset` with its unparsable lines (`data.bad`) in their place, as a stream has them."""
    from vlmkit.data.readers import Row, file_position

    if not data.bad:
        yield from data.rows
        return
    formats = {row.where.rpartition(":")[0]: row.format for row in data.rows}
    order = {path: i for i, path in enumerate(formats)}
    bad = [
        Row(where, DataError(f"{where}: {reason}"), formats.get(where.rpartition(":")[0], data.format), ())
        for where, reason in data.bad
    ]
    yield from sorted([*data.rows, *bad], key=lambda row: file_position(row.where, order))  # JSON rows: a list


def load_template(model: str, encoding: EncodingSettings) -> Template:
    """The family template of `model` with its tokenizer; the weights are not loaded."""
    from vlmkit.models.loader import load_tokenizer_and_template, resolve_model

    return load_tokenizer_and_template(resolve_model(model), encoding)[1]


@app.command("check", context_settings=MANY_DATASETS)
@with_options()
def check(
    ctx: typer.Context,
    model: Model,
    dataset: Datasets,
    reading: DatasetOptions = DatasetOptions(),
    max_length: Annotated[
        int, typer.Option(help="Most tokens per row, image tokens included (as training's --max-length).")
    ] = 2048,
    truncation: Annotated[
        str,
        typer.Option(
            help="What to do with longer rows: delete (leave them out) or shrink (lower their image "
            "resolution until they fit; left out only when --min-pixels does not fit). Rows are never cut."
        ),
    ] = "delete",
    encoding: EncodingSettings = EncodingSettings(),
    histogram: Annotated[
        Path, typer.Option(help="PNG histogram of the token lengths, with --max-length marked.")
    ] = Path("token_lengths.png"),
    bad_samples: Annotated[
        Path | None,
        typer.Option(help="Write one JSON line per bad row (where, kind, reason, row) to this file."),
    ] = None,
    decode_images: Annotated[
        bool,
        typer.Option(
            help="Decode every image to find truncated or corrupt pixel data (about 10 ms a photo); "
            "--no-decode-images reads headers only."
        ),
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    max_completion_length: Annotated[
        int,
        typer.Option(
            help="GRPO prompts (rows with a `solution` column): the tokens vlmkit grpo reserves for each "
            "completion, counted with the prompt against --max-length (as vlmkit grpo's option)."
        ),
    ] = 128,
) -> None:
    """Check every row of the dataset(s) as training will read it: JSON, format, placeholders, images
    (missing, corrupt or cut-short files), an assistant reply to learn, and the token length.

    Preference data (`vlmkit dpo`'s formats) is checked pair by pair: a pair is bad when either conversation
    is, or does not fit --max-length (pairs are never cut); `vlmkit kto`'s labelled rows likewise, row by row.
    GRPO prompts (`vlmkit grpo`'s: the first rows have a `solution` column) are checked as prompts: a row is bad
    without a solution, when it ends with an assistant reply, or when its prompt plus --max-completion-length
    does not fit --max-length (image tokens are never cut).

    Prints the format of each file, counts per reason, the first bad rows (file:line and reason) and
    token-length statistics, and writes a histogram of the lengths.

    Exit status: 0 when every row is good, 1 when some rows are bad (so scripts can stop on it),
    2 for a mistake in the options or an unreadable dataset file."""
    from vlmkit.data.check import check_rows
    from vlmkit.data.preference import check_pairs, is_preference_source, load_preference_datasets
    from vlmkit.data.prompts import check_prompts, is_prompt_source
    from vlmkit.data.unpaired import is_unpaired_source, load_unpaired_datasets
    from vlmkit.train.plots import save_histogram

    specs, show = _datasets(ctx, dataset), progress and sys.stderr.isatty()
    unpaired = is_unpaired_source(specs[0])  # KTO's labelled rows, checked as `vlmkit kto` trains them
    if unpaired or is_preference_source(specs[0]):  # pairs, checked as `vlmkit dpo` trains them (never cut)
        if truncation != "delete":
            raise VlmkitError(f"--truncation {truncation}: preference pairs are never shrunk; leave it out")
        read = load_unpaired_datasets if unpaired else load_preference_datasets
        pairs = read(specs, reading.media_root)
        template = load_template(model, encoding)
        report = check_pairs(pairs, template, max_length, progress=show, decode_images=decode_images)
    elif is_prompt_source(specs[0]):  # GRPO prompts, checked as `vlmkit grpo` refuses them
        rows = _rows_to_check(ctx, dataset, reading)
        template = load_template(model, encoding)
        report = check_prompts(rows, template, max_length, max_completion_length, show, decode_images)
    else:
        rows = _rows_to_check(ctx, dataset, reading)
        template = load_template(model, encoding)
        report = check_rows(rows, template, max_length, truncation, progress=show, decode_images=decode_images)
    typer.echo(report.summary())
    if report.lengths:
        save_histogram(
            report.lengths,
            histogram,
            f"Token lengths of {len(report.lengths)} rows",
            f"tokens per row (images at {template.limit_option} {template.max_limit})"
            if template.limit_option
            else "tokens per row",
            vlines={"--max-length": max_length},
        )
        typer.echo(f"wrote the token-length histogram to {histogram}")
    if bad_samples is not None:
        report.write_bad_samples(bad_samples)
        typer.echo(f"wrote {len(report.bad)} bad rows to {bad_samples}")
    if report.bad:
        raise typer.Exit(1)


def format_tokens(template: Template, encoded: dict[str, Any], colour: bool = False) -> str:
    """The decoded text of `encoded["input_ids"]`: each run of image pad tokens collapsed to
    `<|image_pad|>×N [the template's `describe_image` line]`, supervised text in [[...]]."""
    tokenizer = template.tokenizer
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    pad = tokenizer.convert_ids_to_tokens(template.image_token_id)
    pieces, start, image = [], 0, 0
    while start < len(ids):
        end = start + 1
        if ids[start] == template.image_token_id:
            while end < len(ids) and ids[end] == template.image_token_id:
                end += 1
            pieces.append(f"{pad}×{end - start} [{template.describe_image(encoded, image)}]")
            image += 1
        elif ids[start] == template.video_token_id:  # one run per video (or per frame group)
            while end < len(ids) and ids[end] == template.video_token_id:
                end += 1
            pieces.append(f"{tokenizer.convert_ids_to_tokens(template.video_token_id)}×{end - start}")
        else:
            supervised = labels[start] != -100
            media = (template.image_token_id, template.video_token_id)
            while end < len(ids) and ids[end] not in media and (labels[end] != -100) == supervised:
                end += 1
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            if supervised:
                text = typer.style(f"[[{text}]]", fg="green", bold=True) if colour else f"[[{text}]]"
            pieces.append(text)
        start = end
    return "".join(pieces)


@app.command("preview", context_settings=MANY_DATASETS)
@with_options()
def preview(
    ctx: typer.Context,
    model: Model,
    dataset: Datasets,
    n: Annotated[int, typer.Option("-n", "--rows", help="How many rows to show, from the start.")] = 3,
    reading: DatasetOptions = DatasetOptions(),
    encoding: EncodingSettings = EncodingSettings(),
) -> None:
    """Print the first rows exactly as the model sees them: the decoded input ids with each image's
    run of pad tokens collapsed (count, grid and resized size), the supervised tokens in [[...]]
    (green on a terminal), then the token count and the supervised-token count. A line that is not a JSON
    object is named where it was skipped. Exit status 1 when a shown row does not encode (its error is printed
    in its place) or a line was skipped."""
    data = _load(ctx, dataset, reading)
    template = load_template(model, encoding)
    colour = sys.stdout.isatty()
    failed = 0
    skipped = _skipped_before(data, n)
    for index, row in enumerate(data.rows[:n]):
        failed += _say_skipped(next(skipped))
        typer.echo(f"--- {row.where} ({row.format}) ---")
        try:
            encoded = template.encode(data[index])
        except VlmkitError as e:
            typer.echo(f"error: {e}")
            failed += 1
            continue
        typer.echo(format_tokens(template, encoded, colour))
        supervised = int((encoded["labels"] != -100).sum())
        typer.echo(f"--- {len(encoded['input_ids'])} tokens, {supervised} supervised ---")
    failed += _say_skipped(next(skipped))  # after the last shown row, when the dataset has fewer than n
    if failed:  # a script that previews a dataset must see that rows do not encode
        raise typer.Exit(1)


def _say_skipped(lines: list[tuple[str, str]]) -> int:
    for where, reason in lines:
        typer.echo(f"--- {where}: skipped, {reason} ---")
    return len(lines)


def _skipped_before(data: Any, n: int) -> Iterator[list[tuple[str, str]]]:
    """For each of the first `n` rows of `data` in turn, the unreadable lines (`data.bad`: not JSON objects)
    just before it in file order; then, once, those after the last of them when the dataset has fewer than `n`
    rows (else none). Preview says where it skipped a line rather than pass over it."""
    from vlmkit.data.readers import file_position

    files: dict[str, int] = {}
    for where in [row.where for row in data.rows] + [where for where, _ in data.bad]:
        files.setdefault(where.rpartition(":")[0], len(files))
    bad = sorted(data.bad, key=lambda item: file_position(item[0], files))
    for row in data.rows[:n]:
        here = file_position(row.where, files)
        before = [item for item in bad if file_position(item[0], files) < here]
        bad = bad[len(before) :]
        yield before
    yield bad if len(data.rows) < n else []


@app.command("encode", context_settings=MANY_DATASETS)
@with_options()
def encode(
    ctx: typer.Context,
    model: Model,
    dataset: Datasets,
    cache_dir: Annotated[
        Path,
        typer.Option(help="Encode cache folder; `vlmkit sft` reads OUTPUT_DIR/encode_cache (its --cache-dir)."),
    ] = Path("output/encode_cache"),
    workers: Annotated[int, typer.Option(help="Encoding processes (one core each).")] = 1,
    reading: DatasetOptions = DatasetOptions(),
    max_length: Annotated[
        int, typer.Option(help="As training's --max-length: rows over it are skipped or shrunk.")
    ] = 2048,
    truncation: Annotated[str, typer.Option(help="As training's --truncation: delete or shrink.")] = "delete",
    encoding: EncodingSettings = EncodingSettings(),
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Encode the dataset(s) into the on-disk encode cache with several processes, ahead of training.

    Rows are checked as `data check` checks them, then each good row not yet in the cache is
    encoded (tokens, labels, images decoded once and resized) and stored. Run `vlmkit sft` with the
    same model, data and encoding options and it reads these entries instead of encoding again.
    Exit status 1 when some rows are bad (they are listed; the others are cached)."""
    from vlmkit.data.cache import encode_dataset
    from vlmkit.data.check import check_dataset

    if workers < 1:
        raise VlmkitError(f"--workers {workers}: must be 1 or more")
    data = _load(ctx, dataset, reading)
    template = load_template(model, encoding)
    show = progress and sys.stderr.isatty()
    # encoding decodes every image anyway, and lists the ones that fail
    report = check_dataset(data, template, max_length, truncation, progress=show, decode_images=False)
    rows = [g.index for g in report.good]
    limits = {g.index: g.limit for g in report.good if g.limit}
    stats = encode_dataset(data, template, rows, limits, workers=workers, cache_dir=cache_dir, progress=show)
    typer.echo(f"{cache_dir}: {stats.summary()}")
    for bad in report.bad[:5]:
        typer.echo(f"bad row {bad.where}: {bad.reason}")
    if report.bad or stats.failed:
        raise typer.Exit(1)
