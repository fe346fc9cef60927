"""`vlmkit sft`: supervised fine-tuning, read top to bottom.

    from vlmkit.train import SFTConfig, sft
    run_dir = sft(SFTConfig(model="Qwen/Qwen2-VL-2B-Instruct", dataset=["train.jsonl"], tuner="lora"))

Steps: resolve the model and template -> make (or resume) the run folder -> read and
validate the datasets up front (bad rows skipped and written to bad_samples.jsonl; stop
if too many) -> load the model, freeze and wrap it -> train with transformers' Trainer
(DDP, DeepSpeed and FSDP come from it) -> save, and generate a few validation answers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.models.quantized import check_training
from vlmkit.train.arguments import save_best_by, training_arguments
from vlmkit.train.config import SFTConfig
from vlmkit.train.packing import resolve_packing
from vlmkit.train.resume import loadable_checkpoint, write_fingerprint
from vlmkit.train.run import (
    check_resumed_args,
    interrupted_line,
    lock_run_dir,
    new_run_dir,
    print_result,
    remove_unstarted_run,
    resolve_resume,
    resuming_line,
    saved_args,
    write_val_rows,
)
from vlmkit.train.sets import TrainingSets, data_fingerprints, training_sets
from vlmkit.train.trackers import check_tracker, start_tracker

if TYPE_CHECKING:
    from vlmkit.families.interface import Template


def check_environment(config: SFTConfig) -> None:
    if config.quant:
        if not torch.cuda.is_available():
            raise VlmkitError(
                f"--quant {config.quant} (QLoRA) needs a CUDA GPU for bitsandbytes; this machine has "
                "none. Use --tuner lora without --quant on CPU"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise VlmkitError(f"--quant {config.quant} needs bitsandbytes: pip install 'vlmkit[qlora]'")
    if config.fsdp and not torch.cuda.is_available():
        # accelerate (under the Trainer) turns FSDP on only for GPU-like devices; on CPU the model would be
        # wrapped in DDP instead and --fsdp silently do nothing (checked: accelerate 1.15, torchrun on gloo)
        raise VlmkitError(
            f"--fsdp {config.fsdp} needs CUDA GPUs: on CPU, accelerate trains with DDP instead and the model "
            "is not sharded; leave --fsdp out (torchrun then runs DDP over gloo)"
        )
    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise VlmkitError(f"--deepspeed {config.deepspeed} needs DeepSpeed: pip install 'vlmkit[deepspeed]'")
    check_tracker(config.report_to)


def _make_run_dir(config: SFTConfig, resume_from: Path | None) -> Path:
    """The run folder: the resumed checkpoint's run, or a new one made by the main process for all."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if resume_from is not None:
        return resume_from.parent
    state = PartialState()
    holder = [str(new_run_dir(config.output_dir, config.model)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


@dataclass
class _Base:
    """The model to fine-tune, before its weights load."""

    files: Any  # loader.ModelFiles
    tokenizer: Any
    template: Template
    torch_dtype: Any
    placed: dict[str, Any]  # from_pretrained's placement arguments (--device-map), {} without
    packing_requested: bool | None  # --packing as given (config.packing is then resolved)
    no_packing_reason: str | None


@dataclass
class _Run:
    """The run folder (made, locked, args.json and vlmkit.json written) and the rows read for it."""

    dir: Path
    args: Any  # TrainingArguments
    is_main: bool
    resume_from: Path | None
    settings: dict[str, Any]
    train_data: Any
    val_data: Any
    lock: Any  # held until training ends
    data_prints: dict[str, dict[str, str]]  # the data's fingerprint (main process; `vlmkit.train.resume`)


def sft(config: SFTConfig, callbacks: Sequence[Any] = ()) -> Path:
    """Fine-tune `config.model` on `config.dataset`; returns the run folder. `callbacks`: more transformers
    `TrainerCallback`s for the Trainer (the demo's slow-step check)."""
    base = prepare_base(config)
    run = start_run(config, base)
    with run_guard(config, run) as guard:
        sets = training_sets(config, base, run)  # every row validated before any GPU hour is spent
        model = _load_model(config, base)
        _print_run_summary(config, model, run, sets)
        trainer = _make_trainer(config, base, run, sets, model)
        for callback in callbacks:
            trainer.add_callback(callback)
        guard.started = True
        if train_run(config, run, trainer):
            _after_training(config, base, run, sets, trainer)
        elif run.is_main:
            print_result(run.dir)
    return run.dir


def prepare_base(config: SFTConfig) -> _Base:
    """Check the config and the machine, seed, and resolve the base model (before any data is read)."""
    import transformers
    from transformers import set_seed

    from vlmkit.models import loader

    transformers.utils.logging.disable_progress_bar()
    config.validate()
    check_environment(config)
    loader.check_attn(config.attn_impl)
    set_seed(config.seed)
    return resolve_base(config)


def check_resume(config: SFTConfig, run: _Run) -> None:
    """On the main process of a resumed run: its options and data checked against the checkpoint's (one line
    when they differ), and the run's settings written again."""
    from vlmkit.settings import write_settings

    if run.is_main and run.resume_from is not None:
        check_resumed_args(config, run.dir, run.resume_from, run.data_prints)
        write_settings(run.dir, run.settings)


@contextmanager
def run_guard(config: SFTConfig, run: _Run) -> Iterator[SimpleNamespace]:
    """Around a run's training: a run refused before it started (`guard.started` still False) leaves no empty
    run folder behind, an interrupt prints how to resume, and the run folder's lock is released at the end."""
    guard = SimpleNamespace(started=False)
    try:
        yield guard
    except (VlmkitError, KeyboardInterrupt) as e:
        if run.is_main and not guard.started and run.resume_from is None:  # refused: no empty run folder left
            remove_unstarted_run(run.dir)
        if run.is_main and isinstance(e, KeyboardInterrupt):  # printed before the CLI leaves at once
            print(f"\n{interrupted_line(run.dir, config.resume)}", file=sys.stderr, flush=True)
        raise
    finally:
        if run.lock is not None:  # released now, also when refused: `sft` may be called again in this process
            run.lock.close()


def resolve_base(config: SFTConfig) -> _Base:
    """The model files, family checks, packing, tokenizer, template, dtype and placement."""
    from vlmkit.models import loader, placement

    files = loader.resolve_model(config.model)
    loader.check_weights(files.model_dir)  # a cut-short download: one line now, not a traceback after the data
    if files.family.train_refusal is not None:
        raise VlmkitError(f"--model {config.model}: {files.family.train_refusal}")
    check_training(files.model_dir, f"--model {config.model}", config.tuner, config.quant)  # GPTQ / AWQ checkpoints
    packing_requested = config.packing
    config.packing, no_packing_reason = resolve_packing(config.packing, files.family, config.attn_impl)
    tokenizer, template = loader.load_tokenizer_and_template(files, config.encoding, config.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = loader.torch_dtype(config.dtype, device)
    placed = placement.from_pretrained_placement(config.device_map, config.max_memory)
    return _Base(files, tokenizer, template, torch_dtype, placed, packing_requested, no_packing_reason)


def read_sft_data(config: SFTConfig):
    """(training rows, validation rows or None) of `config`'s datasets, as `vlmkit sft` reads them."""
    from vlmkit.data import load_datasets, split_dataset
    from vlmkit.data.columns import parse_columns

    columns = parse_columns(config.columns)
    read = {"media_root": config.media_root, "seed": config.seed, "columns": columns, "prompt": config.prompt}
    if config.streaming:  # read as training goes (vlmkit.train.streaming); opened here to detect its format
        from vlmkit.data.streaming import open_stream

        train_data = open_stream(config.dataset, config.media_root, columns, config.prompt)
    else:
        train_data = load_datasets(config.dataset, **read)
    val_data = load_datasets(config.val_dataset, **read) if config.val_dataset else None
    if config.split_ratio:
        train_data, val_data = split_dataset(train_data, config.split_ratio, seed=config.seed)
    return train_data, val_data


def start_run(config: SFTConfig, base: _Base, read_data: Callable[[Any], tuple[Any, Any]] = read_sft_data,
              arguments: type | None = None) -> _Run:  # fmt: skip
    """Read the data (`read_data(config)` -> (train rows, validation rows or None)), then make (or resume) the
    run folder and write the run's args and settings. `arguments`: the Trainer's arguments class when not
    transformers' TrainingArguments (TRL's config of its trainer; `training_arguments`).

    TrainingArguments come before the folder: they set up the process group its name is shared over."""
    from vlmkit.settings import write_settings

    resume_from, resume_notes = None, []
    if config.resume:
        named = resolve_resume(config.resume, config.output_dir, config.model)
        resume_from, resume_notes = loadable_checkpoint(
            named, latest=config.resume == "latest", optimizer_files=not (config.deepspeed or config.fsdp)
        )
        if resume_from == named:  # a fallback to an earlier checkpoint names it itself
            resume_notes.insert(0, resuming_line(config.resume, resume_from))
    train_data, val_data = read_data(config)
    args = training_arguments(config, base.torch_dtype, val_data is not None, config.output_dir, arguments)
    run_dir = _make_run_dir(config, resume_from)
    args.output_dir = str(run_dir)
    if hasattr(args, "logging_dir"):
        args.logging_dir = str(run_dir / "runs")
    is_main = args.process_index == 0
    run_lock = lock_run_dir(run_dir) if is_main else None
    for line in resume_notes if is_main else []:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)
    model_dir = base.files.model_dir
    settings = {
        "family": base.files.family.name,
        "base_model": str(config.model if not Path(config.model).exists() else Path(model_dir).resolve()),
        "tuner": config.tuner,
        **base.template.settings,
        "max_length": config.max_length,
    }
    if is_main and base.no_packing_reason:
        print(f"packing off: {base.no_packing_reason}")
    data_prints = data_fingerprints(config, train_data, val_data) if is_main else {}
    if is_main and resume_from is None:
        (run_dir / "args.json").write_text(json.dumps(saved_args(config.to_dict()), indent=2) + "\n")
        write_fingerprint(run_dir, data_prints)
        write_settings(run_dir, settings)
    if is_main and config.split_ratio:
        write_val_rows(val_data, run_dir / "val_split.jsonl")
    return _Run(run_dir, args, is_main, resume_from, settings, train_data, val_data, run_lock, data_prints)


def _load_model(config: SFTConfig, base: _Base):
    """The weights (quantized with --quant, placed with --device-map), frozen and wrapped as asked."""
    from vlmkit.train.tuning import apply_tuning

    return apply_tuning(load_base_weights(config, base), config, base.files.family.module_groups)


def load_base_weights(config: SFTConfig, base: _Base):
    """The base model's weights, quantized with --quant and placed with --device-map; nothing frozen yet."""
    from vlmkit.models import loader, placement

    quantization = None
    if config.quant:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=config.quant == "4bit",
            load_in_8bit=config.quant == "8bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=base.torch_dtype,
        )
    model = loader.load_weights(
        base.files,
        dtype=base.torch_dtype,
        attn_impl=config.attn_impl,
        trust_remote_code=config.trust_remote_code,
        quantization_config=quantization,
        **base.placed,
    )
    if base.placed:
        placement.check_trainable(model)
        if len(set(getattr(model, "hf_device_map", {}).values())) == 1:
            # all on one device: the Trainer places it as any model (it warns about a device map otherwise)
            del model.hf_device_map
    if config.quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    return model


def _print_run_summary(config: SFTConfig, model, run: _Run, sets: TrainingSets) -> None:
    """The run folder, trainable parameters and row counts (main process)."""
    from vlmkit.train.tuning import count_parameters

    trainable, total = count_parameters(model)
    if run.is_main:
        print(
            f"run folder: {run.dir}\ntrainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / total:.2f}%), tuner={config.tuner}, "
            + (f"train rows={len(sets.train_rows)}" if sets.train_rows is not None else "train rows streamed")
            + (f" (in {len(sets.train_set)} packed sequences)" if config.packing and sets.train_rows is not None else "")
            + (f", val rows={len(sets.val_rows)}" if sets.val_set else "")
        )


def _make_trainer(config: SFTConfig, base: _Base, run: _Run, sets: TrainingSets, model):
    """transformers' Trainer with vlmkit's run log, complete-checkpoint saving and change check."""
    from transformers.trainer_callback import PrinterCallback

    from vlmkit.train.callbacks import ChangeCheck, RunLog, VlmTrainer
    from vlmkit.train.checkpoints import CompleteCheckpoints
    from vlmkit.train.tuning import parameter_groups

    family, model_dir = base.files.family, base.files.model_dir
    generated_metrics = None  # --eval-metric
    if run.is_main and sets.val_set is not None and config.eval_metric:
        generated_metrics = _generated_metrics(
            base.tokenizer, base.template, family, model_dir, run.val_data, sets.val_rows, config
        )
    trainer_class = VlmTrainer
    if config.streaming:
        from vlmkit.train.streaming import StreamingTrainer as trainer_class
    trainer = trainer_class(
        **sets.stream_options,
        model=model,
        args=run.args,
        train_dataset=sets.train_set,
        eval_dataset=sets.val_set,
        data_collator=sets.collate,
        processing_class=base.tokenizer,
        parameter_groups=lambda m, decay: parameter_groups(m, config, family.module_groups, decay),
        train_sampler=sets.train_sampler,
        generated_metrics=generated_metrics,
        callbacks=[
            RunLog(run.dir, config.batch_size * config.grad_accum * run.args.world_size, config.progress),
            CompleteCheckpoints(
                run.dir, Path(model_dir), run.settings, keep=config.save_total_limit, best_by=save_best_by(config)
            ),
            ChangeCheck(),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # RunLog shows progress and logs instead
    return trainer


def train_run(config: SFTConfig, run: _Run, trainer) -> bool:
    """Train (resuming from the checkpoint when given), with the experiment tracker open on the main process;
    False when the resumed checkpoint is the end of the run (nothing trained, nothing written)."""
    if run.resume_from is not None:
        done, planned = _resumed_step(run.resume_from), trainer.planned_steps()
        if done >= planned:
            if run.is_main:
                print(
                    f"the run is complete: {run.resume_from} is at step {done} of {planned}; nothing left to train "
                    "(to train longer, start a new run, or raise --max-steps with --allow-changed-args)"
                )
            return False
    finish_tracker = (
        start_tracker(config.report_to, run.dir, run.dir.parent.name, saved_args(config.to_dict()))
        if run.is_main
        else None
    )
    trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    if finish_tracker is not None:
        finish_tracker()
    return True


def _resumed_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def _after_training(config: SFTConfig, base: _Base, run: _Run, sets: TrainingSets, trainer) -> None:
    """On the main process: a few validation answers, the best checkpoint's name, the result lines."""
    if not run.is_main:
        return
    if sets.val_set is not None and config.eval_generate > 0:
        _log_val_generations(
            trainer.model,
            base.tokenizer,
            base.template,
            base.files.family,
            base.files.model_dir,
            run.val_data,
            sets.val_rows,
            config.eval_generate,
            config.eval_max_new_tokens,
            run.dir,
        )
    if config.save_best:
        _write_best_checkpoint(trainer.state, run.dir, config)
    print_result(run.dir)


def _write_best_checkpoint(state, run_dir: Path, config: SFTConfig) -> None:
    """run_dir/best_checkpoint.json: {"checkpoint", "step", "metric", "value"} of the best scored checkpoint."""
    from vlmkit.eval.metrics import metric_names

    if state.best_model_checkpoint is None:
        print("--save-best: no checkpoint was saved at a scored step")
        return
    best = {
        "checkpoint": Path(state.best_model_checkpoint).name,
        "step": state.best_global_step,
        "metric": metric_names(config.eval_metric, "--eval-metric")[0],
        "value": state.best_metric,
    }
    (run_dir / "best_checkpoint.json").write_text(json.dumps(best) + "\n")
    print(f"best checkpoint: {run_dir / best['checkpoint']} ({best['metric']} {best['value']:.4g})")


def _generated_metrics(tokenizer, template, family, model_dir, val_data, rows, config):
    """`--eval-metric`: model -> {"eval_NAME": value} on the first --eval-metric-rows validation rows."""
    from vlmkit.backends.transformers_backend import VLM
    from vlmkit.eval.during_training import score_generated
    from vlmkit.eval.metrics import metric_names
    from vlmkit.eval.trackers import log_prediction_table

    names = metric_names(config.eval_metric, "--eval-metric")
    samples = [val_data[row] for row in rows[: config.eval_metric_rows]]

    def score(model, step: int, callbacks: list) -> dict[str, float]:
        """Scores of this eval; the first answers go to the trackers as a prediction table."""
        device = str(next(model.parameters()).device)
        vlm = VLM(model=model, tokenizer=tokenizer, template=template, family=family, path=Path(model_dir), device=device)  # fmt: skip
        examples: list = []
        scores = score_generated(vlm, samples, names, batch_size=config.batch_size, examples=examples)
        log_prediction_table(callbacks, step, examples)
        return scores

    return score


def _log_val_generations(
    model, tokenizer, template, family, model_dir, val_data, rows, n, max_new_tokens: int, run_dir: Path
) -> None:
    """Greedy answers for the first `n` validation rows, next to their references (log and console)."""
    from vlmkit.backends.transformers_backend import VLM, GenerationOptions
    from vlmkit.infer.batch import split_reference

    vlm = VLM(
        model=model.eval(),
        tokenizer=tokenizer,
        template=template,
        family=family,
        path=Path(model_dir),
        device=str(next(model.parameters()).device),
    )
    with (run_dir / "val_predictions.jsonl").open("w") as out:
        for row in rows[:n]:
            prompt, reference = split_reference(val_data[row])
            reply = vlm.generate([prompt], GenerationOptions(max_new_tokens=max_new_tokens))[0]
            out.write(
                json.dumps(
                    {"where": prompt.where, "response": reply, "labels": reference}, ensure_ascii=False
                )
                + "\n"
            )
            print(f"[val] {prompt.where}\n  reference: {reference}\n  response:  {reply}")
