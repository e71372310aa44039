"""Errors a caller is told about, as OpenAI writes them:
{"error": {"message", "type", "param", "code"}} with an HTTP status."""
from __future__ import annotations

from typing import Any, Dict, Optional


class ApiError(Exception):
  """A refused request: `param` names the request field at fault (e.g.
  "messages[0].content[1].image_url.url"), `code` a stable short reason."""

  def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None,
               status: int = 400, kind: str = "invalid_request_error",
               headers: Optional[Dict[str, str]] = None):
    super().__init__(message)
    self.message, self.param, self.code = message, param, code
    self.status, self.kind, self.headers = status, kind, headers or {}

  def body(self) -> Dict[str, Any]:
    return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                      "code": self.code}}


def queue_full(retry_after_s: int) -> ApiError:
  return ApiError("the server is busy: its request queue is full; retry later", None,
                  "queue_full", status=503, kind="server_busy",
                  headers={"Retry-After": str(int(retry_after_s))})


def timed_out(timeout_s: float) -> ApiError:
  return ApiError(f"the request was not answered within the server's request timeout of "
                  f"{timeout_s:g} s", None, "timeout", status=504, kind="timeout")


def shutting_down() -> ApiError:
  return ApiError("the server is shutting down", None, "shutting_down", status=503,
                  kind="server_busy", headers={"Retry-After": "5"})


def param_path(loc) -> str:
  """pydantic's error location ('body', 'messages', 0, 'role') -> 'messages[0].role'."""
  out = ""
  for part in loc:
    if part == "body" and not out:
      continue
    if isinstance(part, int):
      out += f"[{part}]"
    else:
      out += f".{part}" if out else str(part)
  return out or None
