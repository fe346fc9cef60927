"""Run folders and checkpoints on disk.

OUTPUT_DIR/<model-name>/v<N>-<YYYYMMDD-HHMMSS>/
    args.json            the resolved SFTConfig, local paths absolute (a resume must match it)
    data_fingerprint.json  the rows trained on, per source file (a resume must match it; `vlmkit.train.resume`)
    vlmkit.json          family, base model, tuner, pixel limits, system prompt
    train_log.jsonl      one line per logging step (loss, lr, throughput) and eval
    loss.png             loss, learning rate and grad norm, redrawn as training runs
    bad_samples.jsonl    rows left out (up front, or failed while training), with file:line and reason
    val_split.jsonl      with --split-ratio: the held-out rows, media paths absolute (`infer --val`)
    .lock                held by the process training the run (its pid inside)
    checkpoint-<step>/   adapter or full weights, tokenizer, image-processor config,
                         vlmkit.json, optimizer/scheduler/RNG state, and last of all
                         `vlmkit_complete`, so an interrupted save never looks complete
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vlmkit.data.sources import absolute_source
from vlmkit.errors import VlmkitError
from vlmkit.models.loader import CHECKPOINT_RE, COMPLETE_MARKER, checkpoints, is_complete  # noqa: F401  (re-exported)
from vlmkit.sample import is_local_path

_RUN_RE = re.compile(r"^v(\d+)-")


def model_name(model: str) -> str:
    """`Qwen/Qwen2-VL-2B-Instruct` or `/models/qwen2-vl-2b/` -> the folder name used for runs."""
    return Path(str(model).rstrip("/")).name or "model"


def new_run_dir(output_dir: str | Path, model: str) -> Path:
    """Create OUTPUT_DIR/<model-name>/v<N>-<timestamp>/ with N one more than the highest there."""
    parent = Path(output_dir) / model_name(model)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(m.group(1)) for p in parent.iterdir() if (m := _RUN_RE.match(p.name))]
        run = parent / f"v{max(numbers, default=-1) + 1}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another run started in the same second
            time.sleep(1)


def resolve_resume(resume: str, output_dir: str | Path, model: str) -> Path:
    """`latest` -> the newest complete checkpoint of the newest run of this model; a run folder -> its newest
    complete checkpoint (as `infer --ckpt` takes it); else a checkpoint path."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise VlmkitError(f"--resume {resume}: no such checkpoint folder")
        if not CHECKPOINT_RE.match(path.name) and any(CHECKPOINT_RE.match(p.name) for p in path.iterdir()):
            complete = checkpoints(path)  # a run folder
            if not complete:
                raise VlmkitError(f"--resume {resume}: this run has no complete checkpoint yet; start a new run")
            return complete[-1]
        if not is_complete(path):
            raise VlmkitError(
                f"--resume {resume}: this checkpoint is incomplete (its save was interrupted); "
                "resume from an earlier one"
            )
        return path
    parent = Path(output_dir) / model_name(model)
    runs = sorted(
        (int(m.group(1)), p)
        for p in (parent.iterdir() if parent.is_dir() else [])
        if (m := _RUN_RE.match(p.name))
    )
    for _, run in reversed(runs):
        complete = checkpoints(run)
        if complete:
            return complete[-1]
    raise VlmkitError(f"--resume latest: no complete checkpoint under {parent}")


def resuming_line(resume: str, checkpoint: Path) -> str:
    """What `sft --resume` prints: the checkpoint it resumes from, and why that one when the user named none."""
    if resume == "latest":
        return f"--resume latest: resuming from {checkpoint}"
    if Path(resume).resolve() != checkpoint.resolve():
        return f"--resume {resume}: a run folder; resuming from its newest complete checkpoint, {checkpoint}"
    return f"resuming from {checkpoint}"


def interrupted_line(run_dir: Path, resume: str | None) -> str:
    """What `sft` prints on Ctrl-C: the last complete checkpoint and how to continue from it, or that none was
    saved yet."""
    if not run_dir.is_dir():  # refused or stopped before training started: the folder was removed
        return "stopped before training started; nothing was saved"
    complete = checkpoints(run_dir)
    if not complete:
        return f"stopped; no checkpoint of {run_dir} was saved yet, so there is nothing to resume from"
    again = "run the same command again" if resume == "latest" else "run the same command with --resume latest"
    return f"stopped; the last complete checkpoint is {complete[-1]}: {again} to continue from it"


def remove_unstarted_run(run_dir: Path) -> None:
    """Remove a new run folder refused before training started, unless it holds checkpoints or the bad rows
    that the refusal points to: an empty `vN-<time>/` would only hide the runs that count."""
    kept = [p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name) or p.name.startswith("bad_samples")]
    if not kept:
        shutil.rmtree(run_dir, ignore_errors=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a train_log.jsonl (none if absent; a line cut by a crash is skipped)."""
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def best_checkpoint(
    run_dir: Path, key: str = "eval_loss", lower_is_better: bool = True
) -> tuple[Path, float] | None:
    """(the complete checkpoint with the best `key` (the eval loss, or an `--eval-metric`'s eval_NAME) logged
    at its step, that value), or None when no checkpoint's step was evaluated."""
    values = {line["step"]: line[key] for line in read_log(run_dir / "train_log.jsonl") if line.get(key) is not None}
    scored = [
        (values[step], path)
        for path in checkpoints(run_dir)
        if (step := int(path.name.split("-")[1])) in values
    ]
    if not scored:
        return None
    pick = min if lower_is_better else max
    value, path = pick(scored, key=lambda pair: pair[0])
    return path, value


# Options that may change when a run is resumed: they do not change what is trained or in which order.
RESUME_MAY_CHANGE = frozenset(
    {
        "resume",
        "allow_changed_args",
        "progress",
        "num_workers",
        "encode_cache",
        "cache_dir",
        "encode_workers",
        "device_map",  # where the layers sit, not what they compute
        "max_memory",
        "report_to",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "eval_generate",
        "eval_max_new_tokens",
        "max_bad_fraction",
        "output_dir",
        "attn_impl",
        "gradient_checkpointing",
        "trust_remote_code",
    }
)


def saved_args(options: dict[str, Any]) -> dict[str, Any]:
    """The run's options as args.json keeps them: local paths absolute, so the run's files can be found
    from any folder later (`vlmkit infer --ckpt ... --val`, `--resume`)."""
    saved = dict(options)
    for name in ("model", "media_root", "output_dir", "cache_dir", "resume"):
        if name != "resume" or saved.get(name) != "latest":
            saved[name] = absolute_source(saved.get(name))
    for name in ("dataset", "val_dataset"):
        saved[name] = [absolute_source(spec) for spec in saved.get(name) or []]
    return saved


def changed_args(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`name: old -> new` for each option that shapes training and differs (both as `saved_args` writes them)."""
    return [
        f"{name.replace('_', '-')}: {before.get(name)!r} -> {now.get(name)!r}"
        for name in now
        if name not in RESUME_MAY_CHANGE and name in before and before.get(name) != now.get(name)
    ]


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on `run_dir` for the life of this process (the open file is returned; keep it).

    A second process that trains into the same run (`--resume latest` while the first still runs) gets a
    one-line error naming the holder. The lock is the kernel's (fcntl), so a killed process releases it."""
    import fcntl
    import os

    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise VlmkitError(
            f"run folder {run_dir} is in use by another training process (pid {holder}); wait for it to end "
            "or stop it, then resume"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _portable_row(sample) -> dict[str, Any] | None:
    """A Sample as a `messages` row with absolute media paths; None when it holds in-memory media."""
    import os

    messages = []
    for message in sample.messages:
        content = []
        for part in message["content"]:
            kind = part["type"]
            if kind in ("image", "video"):
                source = part[kind]
                if not isinstance(source, str):
                    return None
                if is_local_path(source):
                    source = os.path.abspath(source)
                part = {"type": kind, kind: source}
            content.append(part)
        messages.append({"role": message["role"], "content": content})
    return {"messages": messages, **({"objects": sample.objects} if sample.objects else {})}


def write_val_rows(dataset, path: Path) -> Path:
    """Write the validation rows split off by --split-ratio as JSON Lines (`messages` with content parts,
    media paths absolute, `objects` kept), so `vlmkit infer --ckpt RUN/checkpoint-N --val` finds them from
    any folder. Rows that do not convert (reported by validation) or hold in-memory media are left out."""
    from vlmkit.errors import DataError

    lines = []
    for i in range(len(dataset)):
        try:
            row = _portable_row(dataset[i])
        except DataError:
            continue
        if row is not None:
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def print_result(run_dir: Path) -> None:
    """The last and the best checkpoint, and the command to chat with the one to use."""
    import shlex

    complete = checkpoints(run_dir)
    if not complete:
        return
    best = best_checkpoint(run_dir)
    print(f"last checkpoint: {complete[-1]}")
    if best is not None:
        print(f"best checkpoint: {best[0]} (eval loss {best[1]:.4f})")
    chosen = best[0] if best is not None else complete[-1]
    print(f"chat with it: vlmkit infer --ckpt {shlex.quote(str(chosen))}")


def check_resumed_args(
    config, run_dir: Path, resume_from: Path, data_prints: dict[str, dict[str, str]] | None = None
) -> None:
    """Refuse to resume with other training options than the run's args.json, or with data whose rows changed
    since the run started (`data_prints`, as `vlmkit.train.resume` makes them, against the run's
    data_fingerprint.json), in one line listing them, unless --allow-changed-args; then keep the old args.json
    and fingerprint beside the new ones."""
    from vlmkit.train.resume import data_changes, read_fingerprint, write_fingerprint

    args_file = run_dir / "args.json"
    now = saved_args(config.to_dict())
    before = json.loads(args_file.read_text()) if args_file.is_file() else {}
    before = saved_args(before) if before else {}
    changes = changed_args(before, now)
    old_prints = read_fingerprint(run_dir)
    same_sources = all(before.get(name) == now.get(name) for name in ("dataset", "val_dataset"))
    # a run from before fingerprints were kept has none to compare; other data files are listed as options
    changed_data = data_changes(old_prints, data_prints) if old_prints and data_prints and same_sources else []
    problems = [f"these options differ from the run's {args_file}: {'; '.join(changes)}"] if changes else []
    if changed_data:
        problems.append(f"the data changed since the run started ({'; '.join(changed_data)})")
    if problems and not config.allow_changed_args:
        raise VlmkitError(
            f"--resume {config.resume}: {'; and '.join(problems)}; resume with the run's options and data, start a "
            "new run, or pass --allow-changed-args to continue anyway"
        )
    step = resume_from.name.split("-")[-1]
    if changes:
        print(f"resuming with changed options (--allow-changed-args): {'; '.join(changes)}")
        shutil.copy(args_file, run_dir / f"args.before-step-{step}.json")
    if changed_data:
        print(f"resuming with changed data (--allow-changed-args): {'; '.join(changed_data)}")
        shutil.copy(run_dir / "data_fingerprint.json", run_dir / f"data_fingerprint.before-step-{step}.json")
    args_file.write_text(json.dumps(now, indent=2) + "\n")
    if data_prints:
        write_fingerprint(run_dir, data_prints)
