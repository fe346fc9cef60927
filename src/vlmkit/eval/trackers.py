"""The prediction table of `vlmkit sft --eval-metric`: at each eval, the first `TABLE_ROWS` answered
validation rows (image, question, prediction, references) go to every tracker the run reports to:

    tensorboard  a Markdown table as text (`eval/predictions`) and each image (`eval/prediction_K`)
    wandb        a `wandb.Table` with an image column (`eval/predictions`)
    swanlab      `swanlab.Image`s captioned with question, prediction and references (`eval/predictions`)
    mlflow       a table artifact `eval_predictions/step_N.json` and the images beside it

`vlmkit grpo` logs its sample rollouts the same way under `train/samples` (`vlmkit.train.grpo_samples`).
Each tracker is found among the Trainer's callbacks (transformers' own integrations) and logged to
only once it has started its run. Each is tested offline (TensorBoard, W&B offline, SwanLab offline, MLflow
file store; tests/integration/test_eval.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmkit.eval.during_training import Example

TABLE_ROWS = 4
COLUMNS = ["image", "question", "prediction", "references"]


def log_prediction_table(callbacks: list, step: int, examples: list[Example], tag: str = "eval/predictions") -> None:
    """Log the first `TABLE_ROWS` examples to the trackers among the Trainer's `callbacks`, under `tag`
    (`vlmkit grpo`'s sample rollouts: `train/samples`, images `train/samples_K`)."""
    shown = examples[:TABLE_ROWS]
    if not shown:
        return
    pictures = [_picture(e.image) for e in shown]
    for callback in callbacks:
        name = type(callback).__name__
        if name == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
            _tensorboard(callback.tb_writer, step, shown, pictures, tag)
        elif name == "WandbCallback" and getattr(callback, "_initialized", False):
            _wandb(callback._wandb, shown, pictures, tag)
        elif name == "SwanLabCallback" and getattr(callback, "_initialized", False):
            _swanlab(callback._swanlab, step, shown, pictures, tag)
        elif name == "MLflowCallback" and getattr(callback, "_initialized", False):
            _mlflow(callback._ml_flow, step, shown, pictures, tag)


def _caption(example: Example) -> str:
    return f"Q: {example.question}\nprediction: {example.prediction}\nreferences: {' / '.join(example.references)}"


def _tensorboard(writer, step: int, shown: list[Example], pictures: list, tag: str) -> None:
    lines = ["| row | question | prediction | references |", "|---|---|---|---|"]
    for k, example in enumerate(shown):
        cells = [example.question, example.prediction, " / ".join(example.references)]
        lines.append(
            f"| {k + 1} | " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    writer.add_text(tag, "\n".join(lines), step)
    for k, picture in enumerate(pictures):
        if picture is not None:
            writer.add_image(f"{_singular(tag)}_{k + 1}", picture, step, dataformats="HWC")
    writer.flush()


def _wandb(wandb, shown: list[Example], pictures: list, tag: str) -> None:
    if wandb.run is None:
        return
    data = [
        [wandb.Image(p) if p is not None else None, e.question, e.prediction, " / ".join(e.references)]
        for e, p in zip(shown, pictures, strict=True)
    ]
    wandb.log({tag: wandb.Table(columns=COLUMNS, data=data)}, commit=False)


def _swanlab(swanlab, step: int, shown: list[Example], pictures: list, tag: str) -> None:
    images = [
        swanlab.Image(p, caption=_caption(e)) for e, p in zip(shown, pictures, strict=True) if p is not None
    ]
    if images:
        swanlab.log({tag: images}, step=step)


def _mlflow(mlflow, step: int, shown: list[Example], pictures: list, tag: str) -> None:
    if mlflow.active_run() is None:
        return
    table = {
        "row": list(range(1, len(shown) + 1)),
        "question": [e.question for e in shown],
        "prediction": [e.prediction for e in shown],
        "references": [" / ".join(e.references) for e in shown],
    }
    folder = tag.replace("/", "_")
    mlflow.log_table(data=table, artifact_file=f"{folder}/step_{step}.json")
    for k, picture in enumerate(pictures):
        if picture is not None:
            mlflow.log_image(picture, artifact_file=f"{folder}/step_{step}_row{k + 1}.png")


def _singular(tag: str) -> str:
    """The images' tag stem: eval/predictions -> eval/prediction (eval/prediction_1, ...); train/samples -> train/sample."""
    return tag.removesuffix("s")


def _picture(source: Any):
    """An HWC uint8 array of an image source (at most 256 px a side), or None when it cannot be opened."""
    from vlmkit.errors import VlmkitError
    from vlmkit.media.images import load_image

    if source is None:
        return None
    try:
        image = load_image(source, where="prediction table").convert("RGB")
    except (VlmkitError, OSError):
        return None
    image.thumbnail((256, 256))
    return np.asarray(image)
