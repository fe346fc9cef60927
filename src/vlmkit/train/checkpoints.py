"""Checkpoints that are complete or absent: the completion marker, rotation after it, and a full disk.

`CompleteCheckpoints` finishes each checkpoint transformers saved (image-processor config, chat
template, vlmkit.json), writes `vlmkit_complete` last, and only then removes old checkpoints, so a
kill at any moment leaves the last complete checkpoint in place. A write that fails for lack of
space ends the run with one line (`disk_full_error`) instead of a traceback.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmkit.errors import VlmkitError
from vlmkit.families import family_for_checkpoint
from vlmkit.models.processor_files import write_processor_files
from vlmkit.settings import write_settings
from vlmkit.train.run import COMPLETE_MARKER, best_checkpoint, checkpoints


class CompleteCheckpoints(TrainerCallback):
    """Makes every checkpoint a loadable, self-describing folder, marks it complete last, and only then
    removes old checkpoints.

    Adds the image-processor config, the chat template and vlmkit.json (family, base model,
    tuner, pixel limits, system prompt) to each checkpoint, then writes `vlmkit_complete`,
    then keeps the newest `keep` complete checkpoints (and the best by eval loss): transformers'
    own rotation is off, as it deletes old checkpoints before the new one is marked complete.
    Also forces a save (and an evaluation, with validation) at the last step so a run always ends
    with a checkpoint.
    """

    def __init__(
        self,
        run_dir: Path,
        model_dir: Path,
        settings: dict[str, Any],
        keep: int | None = None,
        best_by: tuple[str, bool] | None = None,
    ):
        """`best_by`: (logged key, lower is better) of `sft --save-best`'s metric, whose best checkpoint
        rotation keeps too (besides the best by eval loss)."""
        self.run_dir = run_dir
        self.model_dir = model_dir
        self.settings = settings
        self.keep = keep
        self.best_by = best_by

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
            if args.eval_strategy != "no":
                control.should_evaluate = True

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = self.run_dir / f"checkpoint-{state.global_step}"
        try:
            self._complete(checkpoint, state.global_step)
        except OSError as e:
            if is_disk_full(e, self.run_dir):
                raise disk_full_error(self.run_dir, checkpoint) from None
            raise
        if self.keep is not None:
            remove_old_checkpoints(self.run_dir, self.keep, checkpoint, self.best_by)

    def _complete(self, checkpoint: Path, step: int) -> None:
        # the base model's processor files, with the limits this run trains at (for plain transformers)
        family = family_for_checkpoint(self.settings["family"], self.model_dir)
        write_processor_files(family, [self.model_dir], checkpoint, self.settings)
        write_settings(checkpoint, {**self.settings, "step": step})
        (checkpoint / COMPLETE_MARKER).write_text(json.dumps({"step": step}) + "\n")


def remove_old_checkpoints(
    run_dir: Path, keep: int, newest: Path, best_by: tuple[str, bool] | None = None
) -> None:
    """Delete complete checkpoints older than the newest `keep` (never `newest`, never the best by eval
    loss or by `best_by`), and incomplete ones older than `newest` (leftovers of an interrupted save)."""
    complete = checkpoints(run_dir)
    bests = [best_checkpoint(run_dir)] + ([best_checkpoint(run_dir, *best_by)] if best_by else [])
    kept = set(complete[-max(keep, 1) :]) | {newest} | {best[0] for best in bests if best}
    step = int(newest.name.split("-")[1])
    for folder in run_dir.glob("checkpoint-*"):
        if not folder.is_dir() or folder in kept:
            continue
        suffix = folder.name.split("-", 1)[1]
        if folder in complete or (suffix.isdigit() and int(suffix) < step):
            # unmarked first: a crash halfway through the deletion leaves an incomplete folder, never a
            # half-deleted checkpoint that still says it is complete
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error` (or what caused it) is a write that failed for lack of space: OSError ENOSPC, the same
    wrapped by safetensors, or torch's zip writer failing on a disk with almost no space left."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
        if "inline_container" in text or "PytorchStreamWriter" in text:
            try:
                return shutil.disk_usage(folder).free < 256 * 2**20
            except OSError:
                return False
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full_error(run_dir: Path, checkpoint: Path | None, remove: bool = True) -> VlmkitError:
    """The one line for a full disk: what was being written, the last complete checkpoint, how to resume.
    `checkpoint`, the one being saved, is removed (when `remove`): it is incomplete, and its space is needed."""
    if checkpoint is not None and remove:
        shutil.rmtree(checkpoint, ignore_errors=True)
    complete = checkpoints(run_dir)
    last = (
        f"the last complete checkpoint is {complete[-1]}"
        if complete
        else "no checkpoint of this run is complete yet"
    )
    writing = (
        f"saving {checkpoint} (the partial folder was removed)"
        if checkpoint is not None
        else f"writing to {run_dir}"
    )
    again = (
        "run the same command with --resume latest"
        if complete
        else "run the same command again (without --resume: there is nothing to resume from)"
    )
    return VlmkitError(f"disk full while {writing}; {last}; free space on that disk and {again}")
