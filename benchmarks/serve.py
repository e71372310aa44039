"""Serving throughput and latency over HTTP: starts `python -m
metalm_jax.serve` on 127.0.0.1 and drives it with the official `openai`
client from 1, 4 and 16 concurrent callers (closed loop: each caller sends
its next request when the last is answered).

    python benchmarks/serve.py --model_dir=/tmp/export --json_out=/tmp/serve.json
    python benchmarks/serve.py --tiny --requests=32      # the tests' tiny export

Each request: a random 64x48 PNG as a data: URL and a VQA prompt, greedy,
`max_tokens=--max_tokens`, streamed (`stream_options.include_usage`), so the
time to the first content chunk is measured with the full latency. Every
concurrency level is first run untimed, repeatedly until a run compiles
nothing (/health's `compiles`), so the timed run compiles nothing either
(its own count is reported as compiles_while_timed). Reported per level:
requests/s, generated tokens/s, p50 / p99 latency and time to first token,
and the throughput ratio against one caller (sequential requests). The
server sends an answer once it is decoded (docs/serving.md#batching), so
the first token arrives with the whole answer.

Numbers depend on the machine and its load; --json_out writes them with
their provenance (metalm_jax/provenance.py; devices read in a subprocess).
"""
import argparse
import base64
import concurrent.futures
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from metalm_jax import provenance  # noqa: E402

QUESTIONS = ["what is the cat ?", "what colour is the mat ?", "is this a dog ?",
             "what is on the mat ?"]


def tiny_export(out_dir: str) -> str:
  """The tests' tiny model (tests/export_fixtures.py), exported to out_dir."""
  import pathlib
  from tests import export_fixtures

  class _Tmp:
    def mktemp(self, name):
      return pathlib.Path(tempfile.mkdtemp(prefix=name, dir=out_dir))
  return export_fixtures.exported(_Tmp())["out"]


def png_url(seed: int) -> str:
  import numpy as np
  from PIL import Image
  arr = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(args, port: int, log) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "metalm_jax.serve", f"--model_dir={args.model_dir}",
         "--model_name=bench", f"--port={port}", f"--max_batch={args.max_batch}",
         f"--max_queue={max(64, 4 * max(args.concurrency))}", f"--scheduler={args.scheduler}",
         "--log_level=warning"]
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  end = time.monotonic() + 300
  while time.monotonic() < end:
    if proc.poll() is not None:
      raise SystemExit(f"the server exited with {proc.returncode}; see {log.name}")
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
        return proc
    except OSError:
      time.sleep(0.3)
  proc.kill()
  raise SystemExit("the server did not start within 300 s")


def health(port: int) -> dict:
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
    return json.loads(r.read())


def one_request(client, i: int, max_tokens: int, urls):
  """(latency s, time to first content s, completion tokens)."""
  t0 = time.perf_counter()
  first, tokens = None, 0
  stream = client.chat.completions.create(
      model="bench", max_tokens=max_tokens, temperature=0, stream=True,
      stream_options={"include_usage": True},
      messages=[{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}},
          {"type": "text", "text": f"question: {QUESTIONS[i % len(QUESTIONS)]} answer:"}]}])
  for chunk in stream:
    if first is None and chunk.choices and chunk.choices[0].delta.content:
      first = time.perf_counter() - t0
    if chunk.usage is not None:
      tokens = chunk.usage.completion_tokens
  latency = time.perf_counter() - t0
  return latency, latency if first is None else first, tokens


def run_level(client, concurrency: int, requests: int, max_tokens: int, urls) -> dict:
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    rows = list(pool.map(lambda i: one_request(client, i, max_tokens, urls), range(requests)))
  wall = time.perf_counter() - t0
  lat = sorted(r[0] for r in rows)
  ttft = sorted(r[1] for r in rows)
  pct = lambda xs, q: xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
  return {"concurrency": concurrency, "requests": requests, "wall_s": wall,
          "requests_per_s": requests / wall,
          "tokens_per_s": sum(r[2] for r in rows) / wall,
          "latency_p50_s": statistics.median(lat), "latency_p99_s": pct(lat, 0.99),
          "ttft_p50_s": statistics.median(ttft), "ttft_p99_s": pct(ttft, 0.99)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python benchmarks/serve.py")
  p.add_argument("--model_dir", default=None, help="export dir or workdir to serve")
  p.add_argument("--tiny", action="store_true", help="serve the tests' tiny export")
  p.add_argument("--concurrency", default="1,4,16", help="concurrent callers per level")
  p.add_argument("--requests", type=int, default=48, help="timed requests per level")
  p.add_argument("--max_tokens", type=int, default=16)
  p.add_argument("--max_batch", type=int, default=8)
  p.add_argument("--scheduler", choices=("batch", "continuous"), default="batch",
                 help="the server's --scheduler (docs/serving.md#batching)")
  p.add_argument("--json_out", default="", help="write the figures with their provenance")
  args = p.parse_args(argv)
  args.concurrency = [int(c) for c in args.concurrency.split(",")]
  begun = provenance.start()
  import openai

  with tempfile.TemporaryDirectory() as tmp:
    if args.tiny:
      args.model_dir = tiny_export(tmp)
    if not args.model_dir:
      raise SystemExit("--model_dir or --tiny is required")
    port = free_port()
    with open(os.path.join(tmp, "server.log"), "w") as log:
      proc = start_server(args, port, log)
      try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               max_retries=0, timeout=600)
        urls = [png_url(i) for i in range(16)]
        levels = []
        for c in args.concurrency:
          # Untimed runs until one compiles nothing (batch shapes vary with arrivals).
          for _ in range(6):
            before = health(port)["compiles"]
            run_level(client, c, 2 * c, args.max_tokens, urls)
            if health(port)["compiles"] == before:
              break
          before = health(port)["compiles"]
          levels.append(run_level(client, c, args.requests, args.max_tokens, urls))
          levels[-1]["compiles_while_timed"] = health(port)["compiles"] - before
          print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in levels[-1].items()), flush=True)
      finally:
        proc.terminate()
        proc.wait(120)
  base = next((lv for lv in levels if lv["concurrency"] == 1), None)
  for lv in levels:
    lv["throughput_vs_sequential"] = (lv["requests_per_s"] / base["requests_per_s"]
                                      if base else None)
  result = {"benchmark": "serve", "model_dir": args.model_dir if not args.tiny else "tiny",
            "max_tokens": args.max_tokens, "max_batch": args.max_batch,
            "scheduler": args.scheduler, "levels": levels}
  for lv in levels:
    print(f"concurrency {lv['concurrency']:>2}: {lv['requests_per_s']:.2f} req/s "
          f"(x{lv['throughput_vs_sequential']:.2f} vs sequential), p50 {lv['latency_p50_s']:.3f} s,"
          f" p99 {lv['latency_p99_s']:.3f} s, ttft p50 {lv['ttft_p50_s']:.3f} s")
  if args.json_out:
    provenance.write_json(args.json_out, result, begun, devices="subprocess")
    print(f"wrote {args.json_out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
