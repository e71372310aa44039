"""The OpenAI API subset the server speaks: request models (pydantic; fields
OpenAI defines that the server does not use are accepted and ignored), the
checks of the sampling values, and the response / stream-chunk bodies."""
from __future__ import annotations

import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

import pydantic

from metalm_jax.serve.errors import ApiError

MAX_STOP = 4  # stop sequences per request, as OpenAI allows


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  role: Literal["system", "developer", "user", "assistant"]
  content: Union[str, List[Dict[str, Any]]]


class StreamOptions(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  include_usage: bool = False


class Sampling(pydantic.BaseModel):
  """Fields shared by chat and text completions."""
  model_config = pydantic.ConfigDict(extra="ignore")
  model: str
  max_tokens: Optional[int] = None
  temperature: Optional[float] = None   # None / 0: greedy
  top_p: Optional[float] = None
  stop: Optional[Union[str, List[str]]] = None
  seed: Optional[int] = None
  n: Optional[int] = None
  stream: Optional[bool] = False
  stream_options: Optional[StreamOptions] = None


class ChatRequest(Sampling):
  messages: List[Message]
  max_completion_tokens: Optional[int] = None


class CompletionRequest(Sampling):
  prompt: Union[str, List[str]]


def check_sampling(req: Sampling, max_tokens_limit: int, default_max_tokens: int) -> dict:
  """{max_tokens, temperature, top_p, stop, seed}, or an ApiError naming the field."""
  if req.n not in (None, 1):
    raise ApiError(f"n={req.n}: only n=1 is served", "n", "unsupported_value")
  max_tokens, param = req.max_tokens, "max_tokens"
  if getattr(req, "max_completion_tokens", None) is not None:
    max_tokens, param = req.max_completion_tokens, "max_completion_tokens"
  if max_tokens is None:
    max_tokens = default_max_tokens
  if not 1 <= max_tokens <= max_tokens_limit:
    raise ApiError(f"{param}={max_tokens} must be in [1, {max_tokens_limit}]", param,
                   "invalid_value")
  temperature = 0.0 if req.temperature is None else float(req.temperature)
  if not 0 <= temperature <= 2:
    raise ApiError(f"temperature={temperature} must be in [0, 2]", "temperature",
                   "invalid_value")
  top_p = 1.0 if req.top_p is None else float(req.top_p)
  if not 0 < top_p <= 1:
    raise ApiError(f"top_p={top_p} must be in (0, 1]", "top_p", "invalid_value")
  stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
  if len(stop) > MAX_STOP or not all(stop):
    raise ApiError(f"stop: at most {MAX_STOP} non-empty strings", "stop", "invalid_value")
  return dict(max_tokens=int(max_tokens), temperature=temperature, top_p=top_p, stop=stop,
              seed=req.seed)


def new_id(prefix: str) -> str:
  return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, use: dict) -> dict:
  return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                       "logprobs": None, "finish_reason": finish}],
          "usage": use}


def chat_chunk(rid: str, model: str, delta: dict, finish: Optional[str] = None,
               use: Optional[dict] = None) -> dict:
  choices = [] if use is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]
  out = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
         "model": model, "choices": choices}
  if use is not None:
    out["usage"] = use
  return out


def completion_response(rid: str, model: str, text: str, finish: str, use: dict) -> dict:
  return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
          "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
          "usage": use}


def completion_chunk(rid: str, model: str, text: str, finish: Optional[str] = None,
                     use: Optional[dict] = None) -> dict:
  choices = [] if use is not None else [{"index": 0, "text": text, "logprobs": None,
                                          "finish_reason": finish}]
  out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
         "choices": choices}
  if use is not None:
    out["usage"] = use
  return out
