"""`vlmkit serve`: an OpenAI-compatible chat server with the model's own template and settings.

    from vlmkit.serve import serve
    serve("Qwen/Qwen2-VL-2B-Instruct", adapters={"latex": Path("runs/.../checkpoint-200")}, port=8000)

app.py: routes, schema and errors; engine.py: the queue and the token-by-token scheduler;
decode_batch.py: prefill and the decode batch rows join and leave; sampling.py: each row's sampling;
server.py: loading and adapters. `--backend vllm` is translated by vlmkit.backends.vllm_args (shared with `vlmkit infer`). FastAPI
and uvicorn are imported only when a server is built (pip install vlmkit[serve]).
"""

from vlmkit.serve.server import parse_adapters, serve

__all__ = ["parse_adapters", "serve"]
