"""Request content -> prompt parts (metalm_jax.evaluate.prompts), under the
server's input limits.

A chat request's messages are laid out in order, each content part as it
comes, with no chat template (the model was trained on the task formats of
data/formats.py, not on chat turns): a string or a `text` part is plain
decoder text, tokenized on its own; an `image_url` part is an image docked on
the vision encoder; an `input_audio` part a clip docked on the audio encoder.
Roles are accepted and not marked. Images and clips go through the
Predictor's loaders, so they get exactly the training pipeline's inputs.

Image sources: `data:<type>;base64,<data>` URLs. Remote URLs (http, https,
...) are refused; `file://` URLs and plain paths only when the server was
given a root for local files (`Limits.local_root`) and the real path lies
under it. Every refusal is an ApiError naming the request field.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from typing import Any, List, Optional, Sequence

from metalm_jax.evaluate import prompts
from metalm_jax.serve.errors import ApiError

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may carry."""
  max_image_bytes: int = 10 * MiB   # each image (or clip), decoded bytes
  max_images: int = 4               # images per request (also <= the encoder's max_items)
  max_prompt_tokens: int = 0        # decoder positions of the prompt; 0 = the model's limit
  local_root: Optional[str] = None  # file:// URLs / paths allowed under this dir


def _b64(data: str, param: str, limit: int) -> bytes:
  if len(data) * 3 // 4 > limit + 3:  # before decoding: no big allocation for a refusal
    raise ApiError(f"{param}: the data is larger than the server's limit of {limit} bytes",
                   param, "too_large")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise ApiError(f"{param}: invalid base64 ({e})", param, "invalid_base64") from None
  if len(raw) > limit:
    raise ApiError(f"{param}: {len(raw)} bytes is larger than the server's limit of "
                   f"{limit} bytes", param, "too_large")
  return raw


def _local_file(path: str, param: str, limits: Limits) -> bytes:
  if not limits.local_root:
    raise ApiError(f"{param}: local files are refused (the server allows data: URLs only; "
                   f"start it with --allow_local_files_under=DIR to read files there)",
                   param, "local_files_refused")
  root = os.path.realpath(limits.local_root)
  real = os.path.realpath(path)
  if os.path.commonpath([root, real]) != root:
    raise ApiError(f"{param}: {path!r} is outside the allowed root {limits.local_root!r}",
                   param, "outside_allowed_root")
  if not os.path.isfile(real):
    raise ApiError(f"{param}: file {path!r} does not exist", param, "not_found")
  size = os.path.getsize(real)
  if size > limits.max_image_bytes:
    raise ApiError(f"{param}: {size} bytes is larger than the server's limit of "
                   f"{limits.max_image_bytes} bytes", param, "too_large")
  with open(real, "rb") as f:
    return f.read()


def image_bytes(url: Any, param: str, limits: Limits) -> bytes:
  """The encoded bytes an image_url names (see the module docstring)."""
  if not isinstance(url, str) or not url:
    raise ApiError(f"{param}: expected a non-empty string URL", param, "invalid_type")
  if url.startswith("data:"):
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
      raise ApiError(f"{param}: a data: URL must be data:<type>;base64,<data>", param,
                     "invalid_data_url")
    return _b64(data, param, limits.max_image_bytes)
  if url.startswith("file://"):
    return _local_file(url[len("file://"):], param, limits)
  scheme = url.split(":", 1)[0] if "://" in url else ""
  if scheme:
    raise ApiError(f"{param}: {scheme}:// URLs are refused (the server fetches nothing); send "
                   f"the image as a data: URL", param, "remote_url_refused")
  return _local_file(url, param, limits)


def _field(obj: Any, key: str, param: str, types=(str,)) -> Any:
  if not isinstance(obj, dict) or key not in obj:
    raise ApiError(f"{param}.{key} is missing", f"{param}.{key}", "missing_field")
  value = obj[key]
  if not isinstance(value, types):
    raise ApiError(f"{param}.{key} has the wrong type ({type(value).__name__})",
                   f"{param}.{key}", "invalid_type")
  return value


def _content_part(part: Any, param: str, predictor, limits: Limits, counts: dict):
  if not isinstance(part, dict) or not isinstance(part.get("type"), str):
    raise ApiError(f"{param}: a content part is an object with a 'type'", param, "invalid_type")
  kind = part["type"]
  if kind == "text":
    return prompts.Text(_field(part, "text", param))
  if kind == "image_url":
    image = _field(part, "image_url", param, (dict, str))
    where = f"{param}.image_url"
    url = image if isinstance(image, str) else _field(image, "url", where)
    where = where if isinstance(image, str) else f"{where}.url"
    counts["image"] += 1
    most = limits.max_images
    if "image" in predictor.encoders:
      most = min(most, predictor.model_cfg.encoders[predictor.encoders["image"]].max_items)
    if counts["image"] > most:
      raise ApiError(f"{where}: more than {most} image{'s' * (most != 1)} in one request "
                     f"(the server's --max_images and the vision encoder's max_items)", where,
                     "too_many_images")
    return _media(predictor, image_bytes(url, where, limits), "image", where)
  if kind == "input_audio":
    audio = _field(part, "input_audio", param, (dict,))
    where = f"{param}.input_audio.data"
    if "audio" not in predictor.encoders:
      raise ApiError(f"{param}: the served model has no audio encoder; it cannot read "
                     f"input_audio", param, "unsupported_content")
    return _media(predictor, _b64(_field(audio, "data", f"{param}.input_audio"), where,
                                  limits.max_image_bytes), "audio", where)
  raise ApiError(f"{param}.type={kind!r} is not supported (text, image_url, input_audio)",
                 f"{param}.type", "unsupported_content")


def _media(predictor, raw: bytes, kind: str, where: str):
  if kind not in predictor.encoders:
    raise ApiError(f"{where}: the served model has no {kind} encoder", where,
                   "unsupported_content")
  try:
    return predictor.part(raw, kind, where)
  except ValueError as e:
    raise ApiError(str(e), where, f"invalid_{kind}") from None


def chat_parts(messages: Sequence[Any], predictor, limits: Limits) -> List[Any]:
  """A chat request's messages -> the prompt parts, in order."""
  parts: List[Any] = []
  counts = {"image": 0}
  for m, msg in enumerate(messages):
    content = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
    param = f"messages[{m}].content"
    if isinstance(content, str):
      parts.append(prompts.Text(content))
    elif isinstance(content, list):
      for c, part in enumerate(content):
        parts.append(_content_part(part, f"{param}[{c}]", predictor, limits, counts))
    else:
      raise ApiError(f"{param}: a string or a list of content parts", param, "invalid_type")
  parts = [p for p in parts if not (isinstance(p, prompts.Text) and not p.text)]
  if not parts:
    raise ApiError("messages hold no content", "messages", "empty_prompt")
  return parts


def prompt_length(parts: List[Any], predictor, limits: Limits, param: str) -> int:
  """Decoder positions of the prompt (bos, text, brackets, docked slots);
  refuses a prompt over the limit."""
  try:
    length, = prompts.prompt_lengths([parts], predictor.tokenizer, predictor.model_cfg)
  except ValueError as e:  # e.g. more items than an encoder's max_items
    raise ApiError(f"{param}: {e}", param, "invalid_prompt") from None
  limit = limits.max_prompt_tokens or predictor.model_cfg.decoder.max_len
  if length > limit:
    raise ApiError(f"{param}: the prompt takes {length} positions, more than the limit of "
                   f"{limit}", param, "prompt_too_long")
  return length
