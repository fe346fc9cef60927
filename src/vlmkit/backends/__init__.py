"""Engines that generate: the transformers engine (`VLM`, chat, chat cache) and vLLM (offline and `vllm serve` arguments)."""
