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
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.train.config import SFTConfig
from vlmkit.train.encoded import EncodedDataset
from vlmkit.train.packing import PackedDataset, collate_packed, pack_lengths, resolve_packing
from vlmkit.train.run import (
    check_resumed_args,
    lock_run_dir,
    new_run_dir,
    print_result,
    resolve_resume,
    saved_args,
    write_val_rows,
)
from vlmkit.train.trackers import check_tracker, start_tracker, trainer_report_to

DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    },
    "zero3": {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    },
}


def _check_environment(config: SFTConfig) -> None:
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


def _training_arguments(config: SFTConfig, torch_dtype, has_val: bool, output_dir: str):
    from transformers import TrainingArguments

    fsdp_kwargs: dict[str, Any] = {}
    if config.fsdp:
        fsdp_kwargs = {"fsdp": f"{config.fsdp} auto_wrap", "fsdp_config": {"use_orig_params": True}}
    workers = (
        config.num_workers if config.num_workers is not None else (4 if torch.cuda.is_available() else 0)
    )
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_ratio,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy="steps" if has_val else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # CompleteCheckpoints rotates, after the new checkpoint is complete
        **_best_checkpoint_kwargs(config),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=trainer_report_to(config.report_to),
        dataloader_num_workers=workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,  # evaluation reports the loss; logits are only kept where supervised
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU use DDP over gloo
        ddp_backend="gloo"
        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        else None,
        deepspeed=DEEPSPEED_PRESETS[config.deepspeed] if config.deepspeed else None,
        **fsdp_kwargs,
    )


def _batching(config: SFTConfig, template, train_set, train_lengths, val_set, val_lengths, is_main: bool):
    """(train set, val set, train sampler or None, collator): packed sequences with --packing, else
    padded batches, length-grouped with --group-by-length."""
    from vlmkit.train.sampler import LengthGroupedSampler, collate_padded

    if not config.packing:
        sampler = (
            LengthGroupedSampler(train_lengths, config.batch_size, config.seed) if config.group_by_length else None
        )
        return train_set, val_set, sampler, partial(collate_padded, template)
    packs = pack_lengths(train_lengths, config.max_length, seed=config.seed)
    if is_main:
        fill = sum(train_lengths) / (len(packs) * config.max_length)
        print(
            f"packing: {len(train_lengths)} rows into {len(packs)} sequences of up to {config.max_length} "
            f"tokens ({fill:.1%} full)"
        )
    train_set = PackedDataset(train_set, packs)
    if val_set is not None:
        val_set = PackedDataset(val_set, pack_lengths(val_lengths, config.max_length))
    # flash-attention takes the whole batch as one padding-free row; SDPA/eager one padded row per pack.
    padding_free = config.attn_impl == "flash_attention_2"
    return train_set, val_set, None, partial(
        collate_packed, template, padding_free=padding_free, capacity=config.max_length
    )


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


def _validate(dataset, template, config: SFTConfig, run_dir: Path, name: str, is_main: bool):
    """Check every row before training; returns (row indices, {row: max_pixels}, token lengths, whether any
    row holds a video) to train on."""
    from vlmkit.data.check import check_dataset

    report = check_dataset(
        dataset,
        template,
        max_length=config.max_length,
        truncation=config.truncation,
        progress=config.progress and is_main,
    )
    bad_file = run_dir / f"bad_samples{'' if name == 'train' else '_' + name}.jsonl"
    if report.bad and is_main:
        report.write_bad_samples(bad_file)
    if is_main:
        for source, line in dataset.schemas.items():
            print(f"{source}: {line}")
        print(report.summary())
    fraction = len(report.bad) / max(report.total, 1)
    if fraction > config.max_bad_fraction:
        raise VlmkitError(
            f"{len(report.bad)} of {report.total} {name} rows are bad ({fraction:.1%} > --max-bad-fraction "
            f"{config.max_bad_fraction:.1%}); see {run_dir / 'bad_samples.jsonl'} and fix them, or raise the limit"
        )
    if not report.good:
        raise VlmkitError(f"no usable {name} rows left after validation; see {bad_file}")
    return (
        [good.index for good in report.good],
        {g.index: g.max_pixels for g in report.good if g.max_pixels},
        [good.length for good in report.good],
        any(good.has_video for good in report.good),
    )


def sft(config: SFTConfig) -> Path:
    """Fine-tune `config.model` on `config.dataset`; returns the run folder."""
    import transformers
    from transformers import set_seed

    from vlmkit import loader
    from vlmkit.data import load_datasets, split_dataset
    from vlmkit.data.columns import parse_columns
    from vlmkit.settings import write_settings
    from vlmkit.train.callbacks import ChangeCheck, RunLog, VlmTrainer
    from vlmkit.train.checkpoints import CompleteCheckpoints
    from vlmkit.train.tuning import apply_tuning, count_parameters, parameter_groups

    transformers.utils.logging.disable_progress_bar()
    config.validate()
    _check_environment(config)
    loader.check_attn(config.attn_impl)
    set_seed(config.seed)
    files = loader.resolve_model(config.model)
    model_dir, family = files.model_dir, files.family
    if family.train_refusal is not None:
        raise VlmkitError(f"--model {config.model}: {family.train_refusal}")
    packing_requested = config.packing
    config.packing, no_packing_reason = resolve_packing(config.packing, family, config.attn_impl)
    tokenizer, template = loader.load_tokenizer_and_template(files, config.encoding, config.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = loader.torch_dtype(config.dtype, device)

    # The run folder (TrainingArguments first: it sets up the process group that the folder name is shared over).
    resume_from = resolve_resume(config.resume, config.output_dir, config.model) if config.resume else None
    columns = parse_columns(config.columns)
    read = {"media_root": config.media_root, "seed": config.seed, "columns": columns, "prompt": config.prompt}
    train_data = load_datasets(config.dataset, **read)
    val_data = load_datasets(config.val_dataset, **read) if config.val_dataset else None
    if config.split_ratio:
        train_data, val_data = split_dataset(train_data, config.split_ratio, seed=config.seed)
    args = _training_arguments(config, torch_dtype, val_data is not None, output_dir=config.output_dir)
    run_dir = _make_run_dir(config, resume_from)
    args.output_dir = str(run_dir)
    if hasattr(args, "logging_dir"):
        args.logging_dir = str(run_dir / "runs")
    is_main = args.process_index == 0
    run_lock = lock_run_dir(run_dir) if is_main else None  # noqa: F841  (held until training ends)
    settings = {
        "family": family.name,
        "base_model": str(config.model if not Path(config.model).exists() else Path(model_dir).resolve()),
        "tuner": config.tuner,
        **template.settings,
        "max_length": config.max_length,
    }
    if is_main and no_packing_reason:
        print(f"packing off: {no_packing_reason}")
    if is_main and resume_from is None:
        (run_dir / "args.json").write_text(json.dumps(saved_args(config.to_dict()), indent=2) + "\n")
        write_settings(run_dir, settings)
    if is_main and config.split_ratio:
        write_val_rows(val_data, run_dir / "val_split.jsonl")

    # Validate every row before any GPU hour is spent.
    train_rows, train_pixels, train_lengths, has_video = _validate(
        train_data, template, config, run_dir, "train", is_main
    )
    cache = None
    if config.encode_cache:
        from vlmkit.data.cache import open_training_cache

        cache_dir = config.cache_dir or str(Path(config.output_dir) / "encode_cache")
        cache = open_training_cache(
            cache_dir, template, train_data, train_rows, train_pixels, config.encode_workers, is_main
        )
    train_set = EncodedDataset(
        train_data,
        template,
        train_rows,
        train_pixels,
        cache,
        bad_file=run_dir / "bad_samples.jsonl",
        max_bad=max(1, int(config.max_bad_fraction * len(train_data))),
    )
    val_set = None
    if val_data is not None:
        val_rows, val_pixels, val_lengths, val_video = _validate(val_data, template, config, run_dir, "val", is_main)
        has_video = has_video or val_video
        val_set = EncodedDataset(
            val_data,
            template,
            val_rows,
            val_pixels,
            cache,
            bad_file=run_dir / "bad_samples_val.jsonl",
            max_bad=max(1, int(config.max_bad_fraction * len(val_data))),
        )
    if config.packing and has_video:  # known from validation: no second pass over the rows
        if packing_requested:
            raise VlmkitError("--packing: the data has video rows, which cannot be packed yet; use --no-packing")
        config.packing = False
        if is_main:
            print("packing off: the data has video rows, which cannot be packed yet")
            if resume_from is None:
                (run_dir / "args.json").write_text(json.dumps(saved_args(config.to_dict()), indent=2) + "\n")
    if is_main and resume_from is not None:
        check_resumed_args(config, run_dir, resume_from)
        write_settings(run_dir, settings)
    train_set, val_set, train_sampler, collate = _batching(
        config, template, train_set, train_lengths, val_set, val_lengths if val_set else None, is_main
    )

    # The model, frozen and wrapped as asked.
    quantization = None
    if config.quant:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=config.quant == "4bit",
            load_in_8bit=config.quant == "8bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
    model = loader.load_weights(
        files,
        dtype=torch_dtype,
        attn_impl=config.attn_impl,
        trust_remote_code=config.trust_remote_code,
        quantization_config=quantization,
    )
    if config.quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    model = apply_tuning(model, config, family.module_groups)
    trainable, total = count_parameters(model)
    if is_main:
        print(
            f"run folder: {run_dir}\ntrainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / total:.2f}%), tuner={config.tuner}, train rows={len(train_rows)}"
            + (f" (in {len(train_set)} packed sequences)" if config.packing else "")
            + (f", val rows={len(val_rows)}" if val_set else "")
        )

    generated_metrics = None  # --eval-metric
    if is_main and val_set is not None and config.eval_metric:
        generated_metrics = _generated_metrics(tokenizer, template, family, model_dir, val_data, val_rows, config)
    trainer = VlmTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collate,
        processing_class=tokenizer,
        parameter_groups=lambda m, decay: parameter_groups(m, config, family.module_groups, decay),
        train_sampler=train_sampler,
        generated_metrics=generated_metrics,
        callbacks=[
            RunLog(run_dir, config.batch_size * config.grad_accum * args.world_size, config.progress),
            CompleteCheckpoints(
                run_dir, Path(model_dir), settings, keep=config.save_total_limit, best_by=_save_best_by(config)
            ),
            ChangeCheck(),
        ],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # RunLog shows progress and logs instead
    finish_tracker = (
        start_tracker(config.report_to, run_dir, run_dir.parent.name, saved_args(config.to_dict()))
        if is_main
        else None
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if finish_tracker is not None:
        finish_tracker()

    if is_main and val_set is not None and config.eval_generate > 0:
        _log_val_generations(
            trainer.model,
            tokenizer,
            template,
            family,
            model_dir,
            val_data,
            val_rows,
            config.eval_generate,
            config.eval_max_new_tokens,
            run_dir,
        )
    if is_main and config.save_best:
        _write_best_checkpoint(trainer.state, run_dir, config)
    if is_main:
        print_result(run_dir)
    return run_dir


def _save_best_by(config: SFTConfig) -> tuple[str, bool] | None:
    """--save-best: (the logged key of the first --eval-metric, lower is better), or None."""
    if not config.save_best:
        return None
    from vlmkit.eval.metrics import LOWER_IS_BETTER, metric_names

    first = metric_names(config.eval_metric, "--eval-metric")[0]
    return f"eval_{first}", first in LOWER_IS_BETTER


def _best_checkpoint_kwargs(config: SFTConfig) -> dict[str, Any]:
    """--save-best: the Trainer tracks the first --eval-metric (rotation keeps its best: CompleteCheckpoints)."""
    if (best_by := _save_best_by(config)) is None:
        return {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # only the main process scores: others lack the metric
        raise VlmkitError("--save-best runs on one process for now; drop it for multi-process training")
    key, lower_is_better = best_by
    return {"metric_for_best_model": key, "greater_is_better": not lower_is_better}


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
    from vlmkit.eval.during_training import score_generated
    from vlmkit.eval.metrics import metric_names
    from vlmkit.eval.trackers import log_prediction_table
    from vlmkit.model import VLM

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
    from vlmkit.infer import split_reference
    from vlmkit.model import VLM, GenerationOptions

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
