"""The train step of this checkout against the same step at another commit,
timed interleaved: the way to measure a change smaller than the machine's
run-to-run spread.

    python benchmarks/ab_step.py --ref=d7c24e0 --config=configs/pretrain_vl.py:size=bench
    python benchmarks/ab_step.py --ref=HEAD~1 --config=configs/pretrain_vl.py:size=bench \
        --steps=60 --block=5 --json_out=FILE
    # one commit, two sets of XLA flags:
    python benchmarks/ab_step.py --ref=HEAD --config=configs/pretrain_vl.py:size=bench \
        --ours_xla_flags=--xla_cpu_enable_concurrency_optimized_scheduler=false
    # one commit, two malloc modes (metalm_jax/host_memory.py):
    python benchmarks/ab_step.py --ref=HEAD --config=configs/pretrain_vl.py:size=bench \
        --ours_flags=--host_malloc=keep --ref_flags=--host_malloc=system

The commit `--ref` is unpacked (`git archive`) into a temporary folder. Two
worker processes, one per tree (each imports metalm_jax and
benchmarks/train_step.py from its own tree), build the synthetic batch and
compile the step (benchmarks/train_step.py `build`); then the driver has
them run `--block` steps in turn, one at a time, until each has `--steps`:
load on the machine hits both alike. Printed and written (--json_out, with
provenance): both step-time medians and bests, the ratio (ref median / ours:
> 1 means this checkout is faster), the mean and spread of that ratio over
block pairs, both compiled steps' XLA temporaries, both losses after the last
step, each worker's minor page faults per step, peak resident memory and
malloc mode, and each tree's commit. Same --config, --batch_size, --seq_len and
config overrides for both; the ref's train_step.py must have `build`.
--ours_xla_flags / --ref_xla_flags are appended to XLA_FLAGS in that worker's
environment only (XLA reads them once per process); --ours_flags / --ref_flags
are added to that worker's command line (flags of benchmarks/train_step.py).
Each worker applies --host_malloc before its backend starts, as the trainer
does (a ref older than that runs with the system's malloc).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_from_argv(argv) -> str:
  for a in argv:
    if a.startswith("--tree="):
      return a.split("=", 1)[1]
  return ROOT


TREE = _tree_from_argv(sys.argv)
sys.path.insert(0, TREE)

from absl import flags  # noqa: E402

from benchmarks import train_step as bench  # noqa: E402  (--config, --steps, --block, ...)
from metalm_jax import absl_run  # noqa: E402

flags.DEFINE_string("ref", "", "git commit (or ref) to time against this checkout")
flags.DEFINE_bool("worker", False, "internal: run as one tree's worker")
flags.DEFINE_string("tree", ROOT, "internal: the tree a worker imports")
flags.DEFINE_string("ours_xla_flags", "", "XLA_FLAGS added for this checkout's worker")
flags.DEFINE_string("ref_xla_flags", "", "XLA_FLAGS added for the ref's worker")
flags.DEFINE_string("ours_flags", "", "flags added to this checkout's worker (space-separated), "
                    "e.g. --host_malloc=keep")
flags.DEFINE_string("ref_flags", "", "flags added to the ref's worker (space-separated)")
FLAGS = flags.FLAGS
# Flags the driver keeps to itself (a worker gets every other flag it was given).
DRIVER_ONLY = ("ref", "json_out", "tree", "worker", "ours_xla_flags", "ref_xla_flags",
               "ours_flags", "ref_flags")

TAG = "@@ab "


def _send(obj) -> None:
  sys.stdout.write(TAG + json.dumps(obj) + "\n")
  sys.stdout.flush()


def worker() -> None:
  """Compile the step, then run 'run N' / 'quit' commands from stdin."""
  import resource
  import time

  # The malloc mode first, before the backend starts (a ref older than
  # host_setup runs with the system's malloc, as it did).
  host_setup = getattr(bench, "host_setup", None)
  host_malloc = host_setup() if host_setup else "system"
  import jax
  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  config.total_steps = max(config.total_steps, FLAGS.steps + FLAGS.warmup + 10)
  b = bench.build(config, FLAGS.batch_size, FLAGS.seq_len)
  state, metrics = b.state, None
  with b.trainer.mesh_context():
    for _ in range(FLAGS.warmup):
      state, metrics = b.compiled(state, b.batch)
      jax.block_until_ready(metrics)
    _send({"ready": True, "compile_s": b.compile_s, "host_malloc": host_malloc,
           "temp_mb": bench.temp_bytes(b.compiled) / 2**20})
    for line in sys.stdin:
      cmd = line.split()
      if not cmd or cmd[0] == "quit":
        break
      times = []
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(int(cmd[1])):
        t0 = time.perf_counter()
        state, metrics = b.compiled(state, b.batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
      _send({"times": times, "faults": faults, "loss": float(metrics["loss"]),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _read(proc) -> dict:
  for line in proc.stdout:
    if line.startswith(TAG):
      return json.loads(line[len(TAG):])
  raise RuntimeError(f"worker exited (code {proc.wait()}) before answering; see its stderr above")


def _worker_argv(tree: str, extra: str = "") -> list:
  """This process's flags for a worker of `tree`, then `extra`: --config's
  file path is taken inside that tree; --ref and --json_out stay with the
  driver."""
  out = [sys.executable, os.path.abspath(__file__), "--worker", f"--tree={tree}"]
  for a in sys.argv[1:]:
    if a.lstrip("-").split("=", 1)[0].removeprefix("no") in DRIVER_ONLY:
      continue
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
      path, _, arg = spec.partition(":")
      if not os.path.isabs(path):
        path = os.path.join(tree, os.path.relpath(os.path.abspath(path), ROOT))
      a = f"--config={path}" + (f":{arg}" if arg else "")
    out.append(a)
  return out + extra.split()


def _unpack(ref: str, dest: str) -> str:
  sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", f"{ref}^{{commit}}"],
                       capture_output=True, text=True)
  if sha.returncode:
    raise SystemExit(f"--ref={ref!r}: not a commit of {ROOT} ({sha.stderr.strip()})")
  archive = subprocess.Popen(["git", "-C", ROOT, "archive", sha.stdout.strip()],
                             stdout=subprocess.PIPE)
  subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
  if archive.wait():
    raise SystemExit(f"git archive {ref} failed")
  return sha.stdout.strip()


def driver() -> None:
  import numpy as np
  from metalm_jax import provenance
  if not FLAGS.ref:
    raise SystemExit("--ref=COMMIT is required: the commit to time against this checkout")
  begun = provenance.start()
  tmp = tempfile.mkdtemp(prefix="metalm_ab_")
  ref_sha = _unpack(FLAGS.ref, tmp)
  trees = {"ref": tmp, "ours": ROOT}
  xla_flags = {"ref": FLAGS.ref_xla_flags, "ours": FLAGS.ours_xla_flags}
  extra = {"ref": FLAGS.ref_flags, "ours": FLAGS.ours_flags}

  def env(k):
    out = dict(os.environ)
    out["XLA_FLAGS"] = " ".join(f for f in (out.get("XLA_FLAGS", ""), xla_flags[k]) if f)
    return out

  procs = {k: subprocess.Popen(_worker_argv(t, extra[k]), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env(k))
           for k, t in trees.items()}
  try:
    ready = {k: _read(p) for k, p in procs.items()}  # both workers compile at once
    times = {k: [] for k in procs}
    faults = {k: 0 for k in procs}
    rss = {}
    pairs, losses = [], {}
    while len(times["ours"]) < FLAGS.steps:
      n = min(FLAGS.block, FLAGS.steps - len(times["ours"]))
      block = {}
      for k, p in procs.items():
        p.stdin.write(f"run {n}\n")
        p.stdin.flush()
        out = _read(p)
        block[k] = out["times"]
        times[k] += out["times"]
        faults[k] += out["faults"]
        rss[k] = out["peak_rss_mb"]
        losses[k] = out["loss"]
      pairs.append(float(np.median(block["ref"]) / np.median(block["ours"])))
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)
  med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
  result = {
      "ref": FLAGS.ref, "ref_commit": ref_sha, "steps": FLAGS.steps, "block": FLAGS.block,
      "batch": f"{FLAGS.batch_size} x {FLAGS.seq_len}",
      "ref_step_ms_median": med["ref"], "ours_step_ms_median": med["ours"],
      "ref_step_ms_min": 1e3 * min(times["ref"]), "ours_step_ms_min": 1e3 * min(times["ours"]),
      "ref_over_ours": med["ref"] / med["ours"],
      "block_ratio_mean": float(np.mean(pairs)), "block_ratio_std": float(np.std(pairs)),
      "block_pairs": len(pairs),
      "ref_temp_mb": ready["ref"]["temp_mb"], "ours_temp_mb": ready["ours"]["temp_mb"],
      "ref_loss": losses["ref"], "ours_loss": losses["ours"],
      "ref_xla_flags": xla_flags["ref"], "ours_xla_flags": xla_flags["ours"],
      "ref_flags": extra["ref"], "ours_flags": extra["ours"],
      "ref_host_malloc": ready["ref"]["host_malloc"],
      "ours_host_malloc": ready["ours"]["host_malloc"],
      "ref_page_faults_per_step": faults["ref"] / len(times["ref"]),
      "ours_page_faults_per_step": faults["ours"] / len(times["ours"]),
      "ref_peak_rss_mb": rss["ref"], "ours_peak_rss_mb": rss["ours"],
  }
  bench._print(result)
  print(f"ours {med['ours']:.1f} ms vs {FLAGS.ref} ({ref_sha[:7]}) {med['ref']:.1f} ms per step "
        f"(medians of {FLAGS.steps}, interleaved in blocks of {FLAGS.block}): this checkout is "
        f"{result['ref_over_ours']:.3f}x the ref's speed (per block pair "
        f"{result['block_ratio_mean']:.3f} +- {result['block_ratio_std']:.3f}); XLA temporaries "
        f"{result['ours_temp_mb']:.1f} vs {result['ref_temp_mb']:.1f} MB; minor page faults "
        f"per step {result['ours_page_faults_per_step']:.0f} vs "
        f"{result['ref_page_faults_per_step']:.0f} (host_malloc {result['ours_host_malloc']} vs "
        f"{result['ref_host_malloc']}); peak resident memory {result['ours_peak_rss_mb']:.0f} vs "
        f"{result['ref_peak_rss_mb']:.0f} MB")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, result, begun)


def main(argv):
  del argv
  worker() if FLAGS.worker else driver()


if __name__ == "__main__":
  absl_run.run(main)
