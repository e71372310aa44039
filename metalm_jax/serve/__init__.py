"""An OpenAI-compatible HTTP server over a Predictor (docs/serving.md).

  python -m metalm_jax.serve --model_dir=DIR [--host=127.0.0.1 --port=8000 --max_batch=8]

Modules: `errors` (the OpenAI error body), `content` (chat / completion
content -> prompt parts, with the input limits), `batcher` (requests of many
callers decoded together), `schemas` (request and response shapes), `app`
(the FastAPI routes), `__main__` (flags, uvicorn).
"""
