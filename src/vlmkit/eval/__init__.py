"""`vlmkit eval`: score models' answers on a dataset with the metrics of its task (`metrics`), side by side,
with a report (`evaluate`; the command in `vlmkit.commands.eval`), and the same metrics during `vlmkit sft`
(`during_training`)."""

from vlmkit.eval.evaluate import evaluate

__all__ = ["evaluate"]
