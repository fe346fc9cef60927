"""`vlmkit eval`: score a model's answers on a dataset with the metrics of its task (`metrics`), one report."""
