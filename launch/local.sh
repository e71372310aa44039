#!/usr/bin/env bash
# The main job: create .venv if needed, install, build the embedded data set,
# and pretrain the tiny vision-language MetaLM on CPU (<= 10 min on 2 cores);
# then caption and question a few unseen validation scenes (WORKDIR/demo.png).
#
#   bash launch/local.sh                       # workdir: ./workdir_local_vl
#   WORKDIR=/tmp/vl bash launch/local.sh --config.total_steps=1000 --config.optimizer.lr=1e-3
#
# Running it again resumes from the latest checkpoint in the workdir (a
# finished run just re-reports); delete the workdir to start over. Extra
# arguments go to `python -m metalm_jax.main` (any --config.* field);
# `bash launch/local.sh --help` prints this and does nothing else.
set -euo pipefail
for a in "$@"; do
  if [[ "$a" == --help || "$a" == -h ]]; then sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0; fi  # this header is the usage
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKDIR="${WORKDIR:-$ROOT/workdir_local_vl}"
DATA_DIR="${METALM_DATA_DIR:-$HOME/.cache/metalm_jax/tfds}"
CONFIG="${CONFIG:-configs/pretrain_vl.py:size=tiny}"
START=$(date +%s)

bash launch/setup_venv.sh plot  # plot: the run's loss_curve.png
PY="$ROOT/.venv/bin/python"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3

echo "[local] building the embedded data set in $DATA_DIR"
"$PY" -m metalm_jax.data.build --data_dir="$DATA_DIR" --world=tiny --vocab_size=1024 \
  --logtostderr=false --stderrthreshold=warning

echo "[local] pretraining ($CONFIG) in $WORKDIR"
"$PY" -m metalm_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$DATA_DIR" --verbosity=-1 "$@"

"$PY" - "$WORKDIR" "$START" <<'PYEOF'
import json, os, sys, time
workdir, start = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if "eval_loss" in r]
print("\n[local] done in %.1f min" % ((time.time() - start) / 60))
print(f"  train loss  step {train[0]['step']}: {train[0]['loss']:.3f}  ->  "
      f"step {train[-1]['step']}: {train[-1]['loss']:.3f}")
if evals:
  print(f"  eval loss   step {evals[0]['step']}: {evals[0]['eval_loss']:.3f}  ->  "
        f"step {evals[-1]['step']}: {evals[-1]['eval_loss']:.3f}")
last = train[-1]
print(f"  token accuracy {last.get('accuracy', float('nan')):.3f}, "
      f"{last.get('tokens_per_sec', 0):.0f} tokens/s, MFU {100 * last.get('mfu', 0):.1f}%")
print(f"  checkpoints:  {os.path.join(workdir, 'checkpoints')}")
print(f"  metrics:      {os.path.join(workdir, 'metrics.jsonl')}")
print(f"  TensorBoard:  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")
print(f"  loss curve:   {os.path.join(workdir, 'loss_curve.png')}")
PYEOF

# What the model learned: captions and answers on unseen validation scenes
# (demo.png in the workdir), and the commands that serve it and open the notebook.
"$PY" -m metalm_jax.demo --workdir="$WORKDIR"
