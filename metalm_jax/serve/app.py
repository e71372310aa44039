"""The FastAPI app: OpenAI-shaped routes over a Predictor and its Batcher.

  GET  /health               {"status": "ok", "model", "queued", "batches", "requests",
                              "largest_batch", "compiles"}
  GET  /v1/models            the one served model
  POST /v1/chat/completions  messages with text / image_url / input_audio parts
  POST /v1/completions       a text prompt

Every refusal is an OpenAI error body with status 400 (bad input, naming the
field in `param`), 503 + Retry-After (queue full, shutting down) or 504
(request timeout); a failure inside decoding is a 500 with the same body.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import Callable, Iterator, List

import fastapi
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from metalm_jax.evaluate import decode, prompts
from metalm_jax.serve import answers, content, schemas
from metalm_jax.serve import batcher as batcher_lib
from metalm_jax.serve.errors import ApiError, param_path, timed_out


@dataclasses.dataclass(frozen=True)
class Settings:
  model_name: str
  limits: content.Limits = content.Limits()
  max_tokens_limit: int = 256      # the largest max_tokens a request may ask for
  default_max_tokens: int = 16     # when a request gives none
  request_timeout_s: float = 60.0  # queueing + decoding, per request


def _error_response(err: ApiError) -> JSONResponse:
  return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(chunks: List[dict]) -> Iterator[str]:
  for c in chunks:
    yield f"data: {json.dumps(c)}\n\n"
  yield "data: [DONE]\n\n"


def create_app(predictor, batcher: batcher_lib.Batcher, settings: Settings) -> fastapi.FastAPI:
  """The app; its lifespan starts the batcher and, at shutdown (after uvicorn
  has finished the requests in flight), drains and stops it."""

  @contextlib.asynccontextmanager
  async def lifespan(_app):
    batcher.start()
    yield
    await run_in_threadpool(batcher.stop)
    print(f"drained: {batcher.batches} batches, {batcher.rows} requests answered", flush=True)

  app = fastapi.FastAPI(title="metalm_jax", lifespan=lifespan)
  tok, cfg = predictor.tokenizer, predictor.model_cfg
  created = int(time.time())

  @app.exception_handler(ApiError)
  async def _api_error(_request, err: ApiError):
    return _error_response(err)

  @app.exception_handler(RequestValidationError)
  async def _invalid(_request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    param = param_path(first.get("loc", ()))
    msg = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg")
    return _error_response(ApiError(msg or "invalid request", param, "invalid_request"))

  @app.exception_handler(Exception)
  async def _internal(_request, exc: Exception):
    return _error_response(ApiError(f"internal error: {type(exc).__name__}: {exc}", None,
                                    "internal_error", status=500, kind="server_error"))

  @app.get("/health")
  async def health():
    compiles = decode.trace_count() + getattr(batcher, "traces", 0)
    return {"status": "ok", "model": settings.model_name, "queued": batcher.queued(),
            "batches": batcher.batches, "requests": batcher.rows,
            "largest_batch": batcher.largest_batch, "compiles": compiles,
            "joined_mid_decode": getattr(batcher, "joined_mid_decode", 0)}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                        "created": created, "owned_by": "metalm_jax"}]}

  async def generate(req: schemas.Sampling, parts_fn: Callable[[], list], param: str):
    """Checks, queues and awaits one request; returns (answer, prompt length)."""
    if req.model != settings.model_name:
      raise ApiError(f"model={req.model!r} is not served here (served: "
                     f"{settings.model_name!r})", "model", "model_not_found")
    sampling = schemas.check_sampling(req, settings.max_tokens_limit,
                                      settings.default_max_tokens)
    parts = await run_in_threadpool(parts_fn)
    length = content.prompt_length(parts, predictor, settings.limits, param)
    most = batcher_lib.room(length, cfg.decoder)
    if most is not None and sampling["max_tokens"] > most:
      name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else \
          "max_tokens"
      raise ApiError(f"{name}={sampling['max_tokens']}: the prompt takes {length} of the "
                     f"model's {cfg.decoder.max_len} positions and leaves room for {most} "
                     f"tokens", name, "context_length_exceeded")
    job = batcher_lib.Job(parts, length, sampling["max_tokens"], sampling["temperature"],
                          sampling["top_p"], sampling["seed"])
    fut = batcher.submit(job)
    try:
      res = await asyncio.wait_for(asyncio.wrap_future(fut), settings.request_timeout_s)
    except asyncio.TimeoutError:
      fut.cancel()  # still queued: it is skipped; already decoding: its answer is dropped
      raise timed_out(settings.request_timeout_s) from None
    return answers.answer(tok, res.ids, res.finish, sampling["stop"]), length

  @app.post("/v1/chat/completions")
  async def chat(req: schemas.ChatRequest):
    messages = [m.model_dump() for m in req.messages]
    ans, length = await generate(
        req, lambda: content.chat_parts(messages, predictor, settings.limits), "messages")
    rid, use = schemas.new_id("chatcmpl"), schemas.usage(length, ans.tokens)
    if not req.stream:
      return schemas.chat_response(rid, settings.model_name, ans.text, ans.finish, use)
    chunks = [schemas.chat_chunk(rid, settings.model_name, {"role": "assistant", "content": ""})]
    chunks += [schemas.chat_chunk(rid, settings.model_name, {"content": piece})
               for piece in answers.pieces(tok, ans)]
    chunks.append(schemas.chat_chunk(rid, settings.model_name, {}, ans.finish))
    if req.stream_options and req.stream_options.include_usage:
      chunks.append(schemas.chat_chunk(rid, settings.model_name, {}, use=use))
    return StreamingResponse(_sse(chunks), media_type="text/event-stream")

  @app.post("/v1/completions")
  async def completions(req: schemas.CompletionRequest):
    prompt = req.prompt
    if isinstance(prompt, list):
      if len(prompt) != 1:
        raise ApiError(f"prompt: a list of {len(prompt)} prompts; one is served per request",
                       "prompt", "unsupported_value")
      prompt = prompt[0]
    if not prompt:
      raise ApiError("prompt is empty", "prompt", "empty_prompt")
    ans, length = await generate(req, lambda: [prompts.Text(prompt)], "prompt")
    rid, use = schemas.new_id("cmpl"), schemas.usage(length, ans.tokens)
    if not req.stream:
      return schemas.completion_response(rid, settings.model_name, ans.text, ans.finish, use)
    chunks = [schemas.completion_chunk(rid, settings.model_name, piece)
              for piece in answers.pieces(tok, ans)]
    chunks.append(schemas.completion_chunk(rid, settings.model_name, "", ans.finish))
    if req.stream_options and req.stream_options.include_usage:
      chunks.append(schemas.completion_chunk(rid, settings.model_name, "", use=use))
    return StreamingResponse(_sse(chunks), media_type="text/event-stream")

  return app
