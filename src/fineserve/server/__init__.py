"""The OpenAI-compatible HTTP server.

`create_app(backend, config)` builds the FastAPI app over any `Backend` (the in-process engine by
default, a cluster gateway later); `fineserve serve` runs it with uvicorn on 127.0.0.1 unless told
otherwise. Nothing heavy is imported here: torch is loaded only by the in-process backend.
"""
