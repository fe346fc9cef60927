"""`vlmkit infer`: an interactive chat (like `swift infer`) and batch inference over a dataset file.

Chat: type a message; a message of several lines (a paste) goes between two lines of three double
quotes (`BLOCK`). Each `<image>` / `<video>` in it asks for a path or URL (an answer that is neither
is refused and asked again). `clear` resets the history, `exit` / `quit` / end of input leave. Works
with piped input.

Batch: every row of a dataset file (any format `vlmkit.data` reads) becomes one output
line, in input order: the input fields plus `response`, and `objects`: the boxes parsed out of
the response in original-image pixels (`vlmkit.media.grounding`; an input `objects` is kept as
`labels_objects`). With `draw_dir`, each row's images are saved there with those boxes drawn.
When a row ends with an assistant reply, that reply is the reference: it is kept as `labels`
and the model answers the turns before it. A row that cannot be read, encoded or generated gets an
`error` field and no `response` (its reference stays in `labels`), and the run goes on. Rows go to a
resumable `<output>.partial/` first (`vlmkit.infer.output`): a stopped run is finished by the same
call, and under torchrun the processes share the rows and write one output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from vlmkit.backends.transformers_backend import VLM, GenerationOptions, LeaveRequested
from vlmkit.errors import DataError, EngineDeadError, VlmkitError
from vlmkit.infer.describe import describe_images, describe_model
from vlmkit.sample import Sample

if TYPE_CHECKING:
    from vlmkit.infer.output import PartialOutput

SEPARATOR = "-" * 50
PROMPTS = {"<image>": "Input an image path or URL <<< ", "<video>": "Input a video path or URL <<< "}
BLOCK = '"""'  # a line starting with it opens a message of several lines, one ending with it closes it
SEVERAL_LINES = f"a message of several lines goes between two lines of {BLOCK}"
CHAT_HELP = f"chat: {SEVERAL_LINES}; <image> or <video> in a message asks for its path or URL; clear; exit"


def _ask(prompt: str, stdin: TextIO, stdout: TextIO) -> str | None:
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    if not line:
        return None
    line = line.rstrip("\n")
    if stdin is not sys.stdin or not stdin.isatty():
        stdout.write(line + "\n")  # echo piped input so transcripts read like a terminal session
    return line


def read_message(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> str | None:
    """One message typed at the prompt: a line, or the lines between a line starting with `BLOCK` (three
    double quotes) and one ending with it (a pasted text: its newlines kept, one turn); None at end of
    input."""
    line = _ask("<<< ", stdin, stdout)
    if line is None or not line.lstrip().startswith(BLOCK):
        return line
    first = line.lstrip()[len(BLOCK) :]
    if first.rstrip().endswith(BLOCK):  # the block opened and closed on one line
        return first.rstrip()[: -len(BLOCK)]
    lines = [first] if first.strip() else []
    while (line := _ask("... ", stdin, stdout)) is not None:
        if line.rstrip().endswith(BLOCK):
            last = line.rstrip()[: -len(BLOCK)]
            return "\n".join(lines + ([last] if last.strip() else []))
        lines.append(line)
    stderr.write(f'error: end of input inside a message of several lines (no closing {BLOCK}); it was not sent\n')
    return None


def media_answer(answer: str) -> str:
    """A path or URL typed at the image prompt as people give them: a file dragged into a terminal comes
    quoted ('...' or "...") when its name has spaces, or as a file:// URL (percent-encoded); ~ is home."""
    from urllib.parse import unquote, urlparse

    answer = answer.strip()
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "'\"":
        answer = answer[1:-1].strip()
    if answer.startswith("file://"):
        answer = unquote(urlparse(answer).path)
    return str(Path(answer).expanduser()) if answer.startswith("~") else answer


def is_media_source(answer: str) -> bool:
    """Whether an answer at the image/video prompt can be media: an existing file, an http(s) or data: URL.
    Anything else is most likely the next line of a message (a paste), never a path to try."""
    if answer.lower().startswith(("http://", "https://", "data:")):
        return True
    try:
        return Path(answer).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def run_chat(
    vlm: VLM,
    options: GenerationOptions,
    system: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    draw_dir: Path | None = None,
    quiet: bool = False,
    system_option: str | None = None,
) -> None:
    """The interactive loop; returns at `exit`, `quit` or end of input. Streams default to the
    process's standard ones at call time (so redirections made after import are honoured). With
    `draw_dir`, each reply's boxes are drawn on the conversation's images there. Unless `quiet`, the model
    and its settings (`system_option`: the --system given, if any) are described on stderr at start, and
    each new image's sizes and token count before its reply.

    Ctrl-C while a reply streams stops it: the turn is dropped from the history and the prompt comes back;
    Ctrl-C at the prompt raises KeyboardInterrupt (the CLI exits 130)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr

    def note(lines: list[str]) -> None:
        if lines and not quiet:
            stdout.flush()
            stderr.write("".join(line + "\n" for line in lines))
            stderr.flush()

    note([*describe_model(vlm, system_option), CHAT_HELP])
    chat = vlm.chat(system=system)
    while True:
        query = read_message(stdin, stdout, stderr)
        if query is None or query.strip() in ("exit", "quit"):
            return
        if query.strip() == "clear":
            chat.clear()
            stdout.write("History cleared.\n")
            continue
        if not query.strip():
            continue
        media = _ask_media(query, stdin, stdout, stderr)
        if media is None:
            return
        if not media:
            stderr.write("error: no path or URL given; the message was not sent (type it again)\n")
            continue
        before = len(Sample(messages=chat.messages, where="chat").media("image"))
        reply = None
        try:
            reply = chat.stream(query, images=media["<image>"], videos=media["<video>"], options=options)
            note(describe_images(vlm.template, chat.prompt, first=before))
            for piece in reply:
                stdout.write(piece)
                stdout.flush()
        except VlmkitError as e:
            stderr.write(f"error: {e}\n")
            stderr.flush()
            continue
        except LeaveRequested:  # Ctrl-C again while the reply was stopping
            raise
        except KeyboardInterrupt:
            if reply is not None:
                reply.close()  # stops generation (see VLM._stream); Ctrl-C again meanwhile leaves
            stdout.write("\n")
            stderr.write("[reply stopped; the turn is not kept. Ctrl-C again or Ctrl-D leaves]\n")
            stderr.flush()
            continue
        if draw_dir is not None:
            _draw_chat_turn(vlm, chat, draw_dir, stdout)
        stdout.write(f"\n{SEPARATOR}\n")
        stdout.flush()


def _ask_media(query: str, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> dict[str, list[str]] | None:
    """A path or URL asked for each `<image>` / `<video>` of `query`, in order; {} when an answer is empty
    (the turn is cancelled), None at end of input."""
    media: dict[str, list[str]] = {"<image>": [], "<video>": []}
    for tag in sorted(media, key=query.find):
        for _ in range(query.count(tag)):
            answer = _ask_source(tag, stdin, stdout, stderr)
            if answer is None:
                return None
            if not answer:
                return {}
            media[tag].append(answer)
    return media


def _ask_source(tag: str, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> str | None:
    """The answer to `tag`'s prompt, asked again until it is a file or URL (`is_media_source`) or empty;
    None at end of input. A refused answer is one line on stderr; the message waits."""
    while (answer := _ask(PROMPTS[tag], stdin, stdout)) is not None:
        answer = media_answer(answer)
        if not answer or is_media_source(answer):
            return answer
        stderr.write(
            f"error: {answer[:200]!r} is not a file, an http(s) URL or a data: URL; the message is kept: give "
            f"the {tag[1:-1]}'s path or URL, or an empty line to cancel ({SEVERAL_LINES})\n"
        )
        stderr.flush()
    return None


def split_reference(sample: Sample) -> tuple[Sample, str | None]:
    """A sample ending with an assistant reply -> (the turns before it, the reply's text)."""
    if not sample.ends_with_assistant:
        return sample, None
    last = sample.messages[-1]
    reference = "".join(p.get("text", "") for p in last["content"] if p["type"] == "text")
    return Sample(messages=sample.messages[:-1], objects=sample.objects, where=sample.where), reference


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_batch(
    vlm: VLM,
    input_path: str | Path,
    output_path: str | Path,
    options: GenerationOptions,
    batch_size: int = 8,
    media_root: str | Path | None = None,
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
    progress: bool = True,
    draw_dir: str | Path | None = None,
    rows: list[tuple[dict, Sample | DataError]] | None = None,
) -> dict[str, int]:
    """Write one JSON line per input row to `output_path`, in input order; returns counts of ok and failed
    rows (of the whole output, on every rank). `rows`: (raw row, Sample or its DataError) already read from
    `input_path` (`vlmkit eval` splits grounding rows into one row per box); by default they are read here.

    Rows are written as they are answered to `<output>.partial/` (`vlmkit.infer.output`), which becomes
    `output_path` when every row is there: an existing file is never left half-overwritten, a run that
    stops is resumed by the same call (only the rows not yet answered), and under torchrun the ranks share
    the rows and write one output.
    """
    from vlmkit.infer.output import PartialOutput, input_description

    if batch_size < 1:
        raise VlmkitError(f"--batch-size must be at least 1, got {batch_size}")
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise VlmkitError(f"--output {output_path} is the input file; choose another path")
    from vlmkit.data import load_dataset
    from vlmkit.data.readers import samples_in_order

    dataset = None
    if rows is None:  # converted as they are answered: memory does not grow with the dataset
        dataset = load_dataset(str(input_path), media_root=media_root, columns=columns, prompt=prompt)
    count = len(rows) if rows is not None else len(dataset) + len(dataset.bad)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    description = input_description(str(input_path), count, str(vlm.path), vlm.template.settings, options)
    with PartialOutput(output_path, description) as partial:
        mine, answered = partial.rows_to_answer()
        if answered and partial.rank == 0:
            print(f"resuming {partial.folder}: {answered} of {count} rows were answered before; answering "
                  f"the other {count - answered}", file=sys.stderr)  # fmt: skip
        wanted = set(mine)
        numbered = enumerate(samples_in_order(dataset) if rows is None else rows)
        chunks = _batches(((i, *row) for i, row in numbered if i in wanted), batch_size)
        try:
            _write_batches(vlm, chunks, len(mine), partial, options, progress and partial.rank == 0, draw_dir)
        except KeyboardInterrupt:
            print(f"\nstopped; the rows answered so far are kept in {partial.folder}: run the same command "
                  "again to answer the others", file=sys.stderr)  # fmt: skip
            raise
        except EngineDeadError as e:  # every later row would fail the same way: stop with one line
            raise EngineDeadError(
                f"{e}; stopped: the rows answered so far are kept in {partial.folder}: run the same command "
                "again to answer the others"
            ) from e
        return partial.finish()


def _write_batches(
    vlm: VLM,
    chunks: Iterator[list],
    rows: int,
    partial: PartialOutput,
    options: GenerationOptions,
    progress: bool,
    draw_dir: str | Path | None,
) -> None:
    """Generate for `chunks` of (input index, raw row, Sample or DataError) and write one row per input row
    to `partial` (`vlmkit.infer.output.PartialOutput`), flushed after each batch."""
    from tqdm import tqdm

    with (
        tqdm(total=rows, disable=not progress, unit="row") as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmkit-encode") as encoder,
    ):
        # the next batch is read, decoded and encoded in a thread while this one generates (Pillow and
        # torch release the GIL), so a CPU core or the GPU does not wait for image decoding
        chunk = next(chunks, None)
        ahead = encoder.submit(_encode_batch, vlm, chunk) if chunk is not None else None
        while chunk is not None:
            results, pending = ahead.result()
            indices = [index for index, _, _ in chunk]
            chunk = next(chunks, None)
            if chunk is not None:
                ahead = encoder.submit(_encode_batch, vlm, chunk)
            if pending:
                replies = _generate_or_one_by_one(vlm, [e for _, _, e in pending], options)
                for (i, prompt, _), reply in zip(pending, replies, strict=True):
                    if isinstance(reply, Exception):
                        mark_failed(results[i], f"generation failed: {type(reply).__name__}: {reply}")
                    else:
                        results[i]["response"] = reply
                        _add_objects(vlm, prompt, reply, results[i], draw_dir, row_number=indices[i])
            for index, result in zip(indices, results, strict=True):
                partial.write(index, result)
            partial.flush()
            bar.update(len(indices))


def _encode_batch(vlm: VLM, chunk: list) -> tuple[list[dict[str, Any]], list[tuple[int, Sample, dict]]]:
    """(output rows so far, [(index in chunk, prompt, encoded prompt)]) for a batch of input rows; a row
    that cannot be read or encoded gets its `error` here."""
    results: list[dict[str, Any]] = [dict(row) if isinstance(row, dict) else {} for _, row, _ in chunk]
    pending: list[tuple[int, Sample, dict]] = []
    for i, (_, _row, sample) in enumerate(chunk):
        try:
            if isinstance(sample, Exception):
                raise sample
            prompt, reference = split_reference(sample)
            if reference is not None:
                results[i]["labels"] = reference
            if "references" in sample.extra:  # every answer of a column dataset, for scoring
                results[i]["references"] = sample.extra["references"]
            pending.append((i, prompt, vlm.encode(prompt)))
        except VlmkitError as e:
            mark_failed(results[i], str(e))
    return results, pending


def mark_failed(result: dict[str, Any], error: str) -> None:
    """Make `result` (an output row, the input's fields so far) a failed row: `error` and no `response`.
    An input's `response` is its reference (ms-swift query/response rows): it moves to `labels`, where an
    answered row keeps the reference, unless the row already has them; left in `response` it would read
    as a perfect answer to a scorer that ignores `error`."""
    reference = result.pop("response", None)
    if reference is not None:
        result.setdefault("labels", reference)
    result["error"] = error


def _add_objects(
    vlm: VLM, prompt: Sample, reply: str, result: dict, draw_dir: str | Path | None, row_number: int
) -> None:
    """Put the reply's boxes on `result` as `objects` (an input `objects` moves to `labels_objects`) and
    draw them when asked; a problem here is recorded on the row, not raised."""
    from vlmkit.media.grounding import objects_in_reply, reference_objects

    try:
        objects = objects_in_reply(vlm.template, prompt, reply)
        if "objects" in result:
            result["labels_objects"] = result.pop("objects")
        result["objects"] = objects
        if draw_dir is not None:
            from vlmkit.media.draw import save_drawn

            reference = reference_objects(vlm.template, prompt)  # the row's own boxes, drawn beside
            save_drawn(prompt.media("image"), objects, Path(draw_dir), f"row{row_number + 1:05d}", reference)
    except VlmkitError as e:
        result["error"] = f"boxes: {e}"


def _draw_chat_turn(vlm: VLM, chat, draw_dir: Path, stdout: TextIO) -> None:
    """Draw the last reply's boxes on the conversation's images (the prompt's last image by default)."""
    from vlmkit.media.draw import save_drawn
    from vlmkit.media.grounding import objects_in_reply

    prompt = Sample(messages=chat.messages[:-1], where="chat")
    reply = "".join(p.get("text", "") for p in chat.messages[-1]["content"] if p["type"] == "text")
    if not prompt.media("image"):
        return
    turn = sum(m["role"] == "assistant" for m in chat.messages)
    stdout.write("\n")  # the reply's line ends before drawing, so a warning on stderr gets its own line
    stdout.flush()
    try:
        objects = objects_in_reply(vlm.template, prompt, reply)
        paths = save_drawn(prompt.media("image"), objects, Path(draw_dir), f"chat{turn:03d}")
    except VlmkitError as e:
        stdout.write(f"[boxes not drawn: {e}]")
        return
    stdout.write(f"[{len(objects)} box(es) drawn: {', '.join(map(str, paths))}]")


def _generate_or_one_by_one(
    vlm: VLM, encoded: list[dict], options: GenerationOptions
) -> list[str | Exception]:
    """Generate for a batch; if the batch fails, retry each row alone so one bad row fails alone."""
    try:
        return list(vlm.generate_encoded(encoded, options))
    except EngineDeadError:
        raise  # the engine is gone, not the rows: retrying them one by one would fail each the same way
    except Exception as e:  # recorded on the row(s); the run continues
        if len(encoded) == 1:
            return [e]
    results: list[str | Exception] = []
    for item in encoded:
        try:
            results.append(vlm.generate_encoded([item], options)[0])
        except EngineDeadError:
            raise
        except Exception as e:  # recorded on the row; the run continues
            results.append(e)
    return results
