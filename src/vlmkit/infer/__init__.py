"""Batch inference over a dataset and the interactive chat of `vlmkit infer`."""
