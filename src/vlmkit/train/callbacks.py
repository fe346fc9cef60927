"""The pieces vlmkit adds to transformers' Trainer: per-group learning rates, warm-up that never swallows
a short run, a progress bar with throughput, the run log and loss plot, and a loud warning when training
changed nothing. Checkpoint completion and rotation are in `vlmkit.train.checkpoints`."""

from __future__ import annotations

import fnmatch
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, modeling_utils

from vlmkit.errors import VlmkitError
from vlmkit.families.encoding import IGNORE_INDEX
from vlmkit.train.checkpoints import disk_full_error, is_disk_full
from vlmkit.train.run import COMPLETE_MARKER, read_log
from vlmkit.train.sampler import BatchStats

# transformers' models take a boolean (B, T) `logits_to_keep` from 5.21 (`slice_logits_to_keep`); vLLM pins older
MODELS_TAKE_A_LOGITS_MASK = hasattr(modeling_utils, "slice_logits_to_keep")


def supervised_loss(model, inputs: dict[str, Any], num_items_in_batch=None) -> tuple[torch.Tensor, Any]:
    """The causal-LM loss of a batch, with logits computed only where a token is supervised.

    Projecting every position onto a 150k-token vocabulary costs B x T x V floats (1.4 GB for 4 rows of
    600 tokens), nearly all under prompt and image tokens whose labels are -100; the models'
    `logits_to_keep` mask skips them. The value is the one transformers computes from `labels` (fp32
    cross-entropy, mean over supervised tokens, or sum / `num_items_in_batch` over an accumulated
    batch). `inputs` holds `labels` (B, T); returns (loss, outputs with logits (N supervised, V)).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]  # (B, T-1): the token each position predicts
    keep = torch.nn.functional.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # (B, T)
    if MODELS_TAKE_A_LOGITS_MASK:
        outputs = model(**inputs, logits_to_keep=keep)
    else:  # every position's logits, then the supervised ones: the same values, more memory
        outputs = model(**inputs)
        outputs["logits"] = outputs.logits[keep.to(outputs.logits.device)]
    logits = outputs.logits.float()  # (N, V), rows in the mask's row-major order
    supervised = targets[targets != IGNORE_INDEX].to(logits.device)  # (N,), same order
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, supervised), outputs
    loss = torch.nn.functional.cross_entropy(logits, supervised, reduction="sum")
    return loss / num_items_in_batch, outputs


class TrainerParts:
    """What every vlmkit trainer adds to its transformers or TRL trainer (listed first among its bases):
    optimizer parameter groups (`self._parameter_groups(model, decay_names)`: --vit-lr, --aligner-lr, no decay
    on biases and norms), warm-up capped for short runs, the planned step count (what a resume is checked
    against), a full disk ending the run in one line, full weights resumed by their checkpoint names, and no
    model card."""

    _parameter_groups: Callable[..., list[dict[str, Any]]]

    def create_model_card(self, *args, **kwargs) -> None:
        # TRL's trainers write a README.md model card into the run folder at every save; a vlmkit run and its
        # checkpoints describe themselves in args.json and vlmkit.json
        return None

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self.optimizer is None:
            groups = self._parameter_groups(model, set(self.get_decay_parameter_names(model)))
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            wanted = self.args.get_warmup_steps(num_training_steps)
            warmup = capped_warmup_steps(wanted, num_training_steps)
            if warmup < wanted and self.is_world_process_zero():
                print(
                    f"warm-up: {warmup} of {num_training_steps} steps instead of {wanted} (at most a third of a run "
                    "warms up, so that a short run still trains at --lr)"
                )
            self.args.warmup_steps = warmup  # a count (an int >= 1, or 0): the trainer uses it as it is
        return super().create_scheduler(num_training_steps, optimizer)

    def planned_steps(self) -> int:
        """The optimizer steps this run trains to (--max-steps, or --epochs over the data), as `train` counts them."""
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]

    def _save_checkpoint(self, model, trial) -> None:
        """As the Trainer's, but a full disk ends the run with one line naming the last complete checkpoint, and
        a checkpoint saved again (a resume from an earlier one) is unmarked first: a crash while its files are
        rewritten must not leave a mix that is still marked complete."""
        checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if self.is_world_process_zero():
            (checkpoint / COMPLETE_MARKER).unlink(missing_ok=True)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as e:
            run_dir = Path(self.args.output_dir)
            if not is_disk_full(e, run_dir):
                raise
            raise disk_full_error(run_dir, checkpoint, remove=self.is_world_process_zero()) from None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load full weights through `from_pretrained`, which maps the saved (checkpoint-layout) names to the
        model's. transformers 5's Trainer loads them by raw name, which for Qwen-VL models matches nothing and
        only logs a warning, so a resumed full fine-tune would silently restart from the base weights."""
        checkpoint = Path(resume_from_checkpoint)
        if (
            self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or (checkpoint / "adapter_config.json").is_file()
        ):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        saved = type(target).from_pretrained(checkpoint, dtype=target.dtype).state_dict()
        missing, unexpected = target.load_state_dict(saved, strict=False)
        if missing or unexpected:
            raise VlmkitError(
                f"--resume {checkpoint}: its weights do not match the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); resume with the same --model"
            )


class VlmTrainer(TrainerParts, Trainer):
    """Trainer with vlmkit's `TrainerParts` (optimizer parameter groups from `parameter_groups(model,
    decay_names)`, ...), an optional training-order sampler (length grouping), padding / fill fractions from the collator's
    `batch_stats` added to the training logs, and optional metrics of generated answers at each eval."""

    def __init__(
        self,
        *args,
        parameter_groups: Callable[..., list[dict[str, Any]]],
        train_sampler: torch.utils.data.Sampler | None = None,
        generated_metrics: Callable[[torch.nn.Module, int, list], dict[str, float]] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._parameter_groups = parameter_groups
        self._train_sampler = train_sampler
        self._generated_metrics = generated_metrics
        self.batch_stats = BatchStats()

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """Eval loss, then (`sft --eval-metric`) the metrics of generated answers, logged like it."""
        metrics = super().evaluate(*args, **kwargs)
        if self._generated_metrics is not None and self.is_world_process_zero():
            training = self.model.training
            step, callbacks = self.state.global_step, self.callback_handler.callbacks
            scores = self._generated_metrics(self.model.eval(), step, callbacks)
            self.model.train(training)
            self.log(scores)
            metrics.update(scores)
        return metrics

    def _get_train_sampler(self, train_dataset=None):
        if self._train_sampler is not None:
            return self._train_sampler
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        stats = inputs.pop("batch_stats", None)
        if stats is not None and model.training:
            self.batch_stats.add(stats)
        loss, outputs = supervised_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: num_items_in_batch counts every process's tokens, DDP averages.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs or "train_loss" in logs:  # training logs, and the end-of-training summary
            logs.update(self.batch_stats.log_fields())
        super().log(logs, start_time)


def capped_warmup_steps(wanted: int, total: int) -> int:
    """Warm-up steps for a run of `total` optimizer steps: `wanted`, but at most a third of the run.

    Linear warm-up's first step has learning rate 0, so uncapped warm-up swallows a short run: with
    --warmup-ratio 0.05 a 1-step run (a small dataset, one epoch) trains at lr 0 and changes nothing.
    Runs of 1 and 2 steps get no warm-up and train at --lr from the first step."""
    return min(wanted, total // 3)


def fingerprint(model: torch.nn.Module, most: int = 2**20) -> dict[str, tuple[float, float]]:
    """Per trainable parameter (with elements on this process): (sum, sum of squares) in float64 of at most
    `most` evenly strided elements, so a full fine-tune's embedding is not copied whole. Any optimizer step
    at a nonzero learning rate changes it (lora_B starts at exactly 0; Adam moves every element)."""
    prints = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and param.numel():
                flat = param.detach().reshape(-1)
                values = flat[:: flat.numel() // most + 1].double()
                prints[name] = (float(values.sum()), float(values.square().sum()))
    return prints


class ChangeCheck(TrainerCallback):
    """Says loudly at the end when training changed none of the trainable weights (learning rate 0 through
    warm-up or a schedule, no supervised tokens, ...): the checkpoint would silently equal the start."""

    def __init__(self):
        self.start: tuple[int, dict[str, tuple[float, float]]] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self.start = (state.global_step, fingerprint(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.start is None or model is None or not self.start[1]:
            return
        start_step, before = self.start
        if state.global_step <= start_step:
            return  # nothing to train (resumed at the end)
        after = fingerprint(model)
        if any(after.get(name) != value for name, value in before.items()):
            return
        rates = [line["learning_rate"] for line in state.log_history if "learning_rate" in line]
        shown = f"; logged learning rates: {', '.join(f'{r:.3g}' for r in rates[:5])}" if rates else ""
        print(
            f"\nWARNING: training ran {state.global_step - start_step} step(s) and changed none of the "
            f"{len(before)} trainable tensors: the checkpoint equals the starting weights{shown}. Check "
            "--lr, --warmup-ratio, --scheduler and that the rows have assistant replies to learn.\n",
            file=sys.stderr,
            flush=True,
        )


class RunLog(TrainerCallback):
    """Appends every log to train_log.jsonl, redraws loss.png (loss, learning rate, grad norm, and the method's
    own `panels`: rewards, KL, completion lengths), and shows a progress bar with loss, lr, samples/s, tokens/s
    and ETA, and a line per evaluation."""

    def __init__(self, run_dir: Path, samples_per_step: int, progress: bool = True, panels: Panels = ()):
        self.run_dir = run_dir
        self.samples_per_step = samples_per_step
        self.progress = progress
        self.bar = None
        self.start: tuple[float, int, int] | None = None
        self.curves: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in _CURVES}
        self.metric_curves: dict[str, list[tuple[float, float]]] = {}  # sft --eval-metric: eval_NAME
        self.panels = panels
        self.panel_curves: dict[str, dict[str, list[tuple[float, float]]]] = {title: {} for title, _ in panels}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm import tqdm

        self.start = (time.perf_counter(), state.global_step, state.num_input_tokens_seen or 0)
        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        # A resumed run keeps its curve up to the checkpoint and drops what came after it.
        log = self.run_dir / "train_log.jsonl"
        kept = [line for line in read_log(log) if line.get("step", 0) <= state.global_step]
        if log.is_file():
            log.write_text("".join(json.dumps(line) + "\n" for line in kept))
        for line in kept:
            self._add_point(line)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def _add_point(self, logs: dict[str, Any]) -> None:
        for name, key in _CURVES:
            value = logs.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.curves[name].append((logs["step"], float(value)))
        for key, value in logs.items():
            plotted = _is_generated_metric(key) and key not in ("eval_loss", "eval_generated_rows")
            if plotted and isinstance(value, (int, float)):
                self.metric_curves.setdefault(key[len("eval_") :], []).append((logs["step"], value))
        for title, patterns in self.panels:
            for key, value in logs.items():
                if any(fnmatch.fnmatchcase(key, p) for p in patterns) and isinstance(value, (int, float)):
                    if math.isfinite(value):
                        self.panel_curves[title].setdefault(key, []).append((logs["step"], float(value)))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        if self.start is not None and state.global_step > self.start[1]:
            elapsed = time.perf_counter() - self.start[0]
            steps = state.global_step - self.start[1]
            samples = logs.get("samples_seen", 0) * args.world_size or steps * self.samples_per_step
            record["samples_per_second"] = round(samples / elapsed, 3)
            tokens = (state.num_input_tokens_seen or 0) - self.start[2]
            if tokens:
                record["tokens_per_second"] = round(tokens / elapsed, 1)
        with self._disk_full_is_one_line():
            with (self.run_dir / "train_log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        self._add_point(record)
        if not self.progress:  # plain lines for logs and non-interactive runs
            shown = {k: v for k, v in record.items() if k in _SHOWN or _is_generated_metric(k)}
            print(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()),
                flush=True,
            )
        elif self.bar is not None and "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(
                loss=f"{logs['loss']:.4f}",
                lr=f"{logs.get('learning_rate', 0):.2e}",
                samples_s=record.get("samples_per_second"),
                tokens_s=record.get("tokens_per_second"),
                **{key: record[key] for key in ("padding_fraction", "fill_fraction") if key in record},
            )
        with self._disk_full_is_one_line():
            self._plot()

    @contextmanager
    def _disk_full_is_one_line(self):
        """A write to the run folder that fails for lack of space ends the run with `disk_full_error`'s line."""
        try:
            yield
        except OSError as e:
            if is_disk_full(e, self.run_dir):
                raise disk_full_error(self.run_dir, None) from None
            raise

    def _plot(self) -> None:
        from vlmkit.train.plots import save_line_panels

        panels = [
            ("loss", {name: self.curves[name] for name in ("train loss", "eval loss") if self.curves[name]}),
            ("learning rate", {"learning rate": self.curves["learning rate"]}),
            ("grad norm", {"grad norm": self.curves["grad norm"]}),
            *self.panel_curves.items(),
        ]
        panels = [(title, series) for title, series in panels if any(series.values())]
        if panels:
            save_line_panels(panels, self.run_dir / "loss.png", xlabel="step")
        if self.metric_curves:
            from vlmkit.train.plots import save_line_plot

            path = self.run_dir / "metrics.png"
            save_line_plot(self.metric_curves, path, title="eval metrics", xlabel="step", ylabel="value")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


# A method's own curves in loss.png: (panel title, the log keys drawn in it, as fnmatch patterns)
Panels = tuple[tuple[str, tuple[str, ...]], ...]
# GRPO and RLOO (TRL's log names): the weighted reward and each component's mean, the KL to the reference model,
# the completions' mean length
RL_PANELS: Panels = (
    ("reward", ("reward", "rewards/*/mean")),
    ("KL", ("kl",)),
    ("completion length", ("completions/mean_length",)),
)
# DPO and KTO: the implicit rewards of the chosen (desirable) and rejected replies and their margin, KTO's KL estimate
PREFERENCE_PANELS: Panels = (
    ("rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("KL", ("kl",)),
)

_CURVES = (
    ("train loss", "loss"),
    ("eval loss", "eval_loss"),
    ("learning rate", "learning_rate"),
    ("grad norm", "grad_norm"),
)


def _is_generated_metric(key: str) -> bool:
    """`eval_NAME` of `sft --eval-metric` (not the Trainer's eval_runtime and eval_*_per_second)."""
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second"))


_SHOWN = (
    "step",
    "epoch",
    "loss",
    "eval_loss",
    "learning_rate",
    "grad_norm",
    "samples_per_second",
    "tokens_per_second",
    "padding_fraction",
    "fill_fraction",
)
