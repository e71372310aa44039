"""python -m metalm_jax.serve --model_dir=DIR [--host=127.0.0.1 --port=8000 --max_batch=8 ...]

Serves an export dir or a training workdir (convert/predictor.py `load`)
over the OpenAI API subset of docs/serving.md until SIGTERM / SIGINT, which
finish the requests in flight (uvicorn's graceful shutdown), then drain the
batcher and exit 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from metalm_jax import optional
from metalm_jax.serve import content


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m metalm_jax.serve")
  p.add_argument("--model_dir", required=True, help="export dir or training workdir")
  p.add_argument("--model_name", default=None,
                 help="the model id clients name (default: the dir's base name)")
  p.add_argument("--step", type=int, default=None, help="a workdir's checkpoint step")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max_batch", type=int, default=8, help="requests decoded together")
  p.add_argument("--max_queue", type=int, default=64,
                 help="waiting requests; more are refused with 503 + Retry-After")
  p.add_argument("--scheduler", choices=("batch", "continuous"), default="batch",
                 help="batch: a batch decodes to its end before the next starts; continuous: "
                      "requests join and leave between decode steps (docs/serving.md)")
  p.add_argument("--cache_len", type=int, default=0,
                 help="continuous: KV-cache positions shared by joins and steps "
                      "(0: 4 x the decoder's max_len)")
  p.add_argument("--batch_wait_ms", type=float, default=5.0,
                 help="how long an idle batcher waits for more requests to join")
  p.add_argument("--request_timeout_s", type=float, default=60.0,
                 help="queueing + decoding per request; then 504")
  p.add_argument("--max_tokens_limit", type=int, default=256,
                 help="the largest max_tokens a request may ask for")
  p.add_argument("--default_max_tokens", type=int, default=16,
                 help="max_tokens of a request that gives none")
  p.add_argument("--max_image_bytes", type=int, default=content.Limits.max_image_bytes,
                 help="per image or audio clip, encoded")
  p.add_argument("--max_images", type=int, default=content.Limits.max_images,
                 help="images per request")
  p.add_argument("--max_prompt_tokens", type=int, default=0,
                 help="decoder positions of a prompt (0: the decoder's max_len)")
  p.add_argument("--allow_local_files_under", default=None,
                 help="read file:// URLs and paths under this dir (default: refused)")
  p.add_argument("--log_level", default="info")
  return p.parse_args(argv)


def _exit_zero(signum, _frame):
  raise SystemExit(0)


def main(argv=None) -> int:
  args = parse_args(argv)
  optional.require("fastapi", "python -m metalm_jax.serve")
  uvicorn = optional.require("uvicorn", "python -m metalm_jax.serve")

  from metalm_jax.convert.predictor import Predictor
  from metalm_jax.serve import app as app_lib
  from metalm_jax.serve import batcher as batcher_lib

  predictor = Predictor(args.model_dir, max_new_tokens=args.default_max_tokens,
                        batch_size=args.max_batch, step=args.step)
  limits = content.Limits(max_image_bytes=args.max_image_bytes, max_images=args.max_images,
                          max_prompt_tokens=args.max_prompt_tokens,
                          local_root=args.allow_local_files_under)
  settings = app_lib.Settings(
      model_name=args.model_name or os.path.basename(os.path.normpath(args.model_dir)),
      limits=limits, max_tokens_limit=args.max_tokens_limit,
      default_max_tokens=args.default_max_tokens, request_timeout_s=args.request_timeout_s)
  kw = dict(max_batch=args.max_batch, max_queue=args.max_queue,
            batch_wait_s=args.batch_wait_ms / 1000)
  if args.scheduler == "continuous":
    from metalm_jax.serve import continuous
    batcher = continuous.ContinuousBatcher(predictor, cache_len=args.cache_len, **kw)
  else:
    batcher = batcher_lib.Batcher(predictor, **kw)
  app = app_lib.create_app(predictor, batcher, settings)
  print(f"serving {settings.model_name!r} from {args.model_dir} on "
        f"http://{args.host}:{args.port}/v1", flush=True)
  # uvicorn takes SIGTERM / SIGINT while it serves and, once it has finished
  # the requests in flight and the lifespan has drained the batcher, raises
  # the signal again to the handler it found: this one, so the exit is 0.
  signal.signal(signal.SIGTERM, _exit_zero)
  uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
  return 0


if __name__ == "__main__":
  sys.exit(main())
