#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) a queued resource, copy and
# install the code on every worker, then start the same entry point on all
# workers with one config, streaming their logs here. jax.distributed starts
# from the TPU environment on each worker (metalm_jax/main.py).
#
#   bash launch/tpu_pod.sh --name=metalm-v5 --zone=us-west4-a --accelerator=v5litepod-16 \
#       --config=configs/pretrain_vl.py:size=paper --workdir=gs://BUCKET/runs/vl \
#       [--project=P] [--version=v2-alpha-tpuv5-lite] [--spot] [--dry_run] \
#       [--data_bucket=gs://BUCKET/tfds] \
#       [-- --config.optimizer.lr=2e-4 --config.data.num_workers=4 ...]
#   bash launch/tpu_pod.sh --help
#
# Input workers per host (config.data.num_workers; the presets read input
# in-process): docs/performance.md#input-at-pod-rate gives the count per model
# and target.
#
# --data_bucket mounts a bucket read-only with gcsfuse at /tmp/metalm_data on
# every worker and passes --config.data.data_dir=/tmp/metalm_data (array_record
# reads local files only: metalm_jax/data/data_dir.py).
# --dry_run prints every command instead of running it. Re-running resumes:
# the trainer restores the latest checkpoint in --workdir. On every worker the
# entry point runs in a restart loop: exit status 42 means "preempted (SIGTERM
# or a maintenance notice), checkpoint saved, resume me" and starts it again on
# the same workdir; any other status ends the loop with that status.
set -euo pipefail

NAME="" ZONE="" ACCEL="" CONFIG="" WORKDIR="" PROJECT="" SPOT=0 DRY=0 DATA_BUCKET=""
VERSION="tpu-ubuntu2204-base"
JAX_SPEC="jax[tpu]==0.10.2"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --data_bucket=*) DATA_BUCKET="${1#*=}" ;;
    --dry_run) DRY=1 ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;  # this header is the usage
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument $1 (--help: usage)" >&2; exit 2 ;;
  esac
  shift
done
for v in NAME ZONE ACCEL CONFIG WORKDIR; do
  if [[ -z "${!v}" ]]; then
    echo "tpu_pod.sh: --$(echo "$v" | tr 'A-Z' 'a-z' | sed 's/accel/accelerator/') is required" >&2
    exit 2
  fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GC=(gcloud)
[[ -n "$PROJECT" ]] && GC+=(--project="$PROJECT")
TPU=("${GC[@]}" compute tpus)

run() {  # prints the command; runs it unless --dry_run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ $DRY -eq 1 ]] || "$@"
}

# 1. The slice: reuse when it exists, else queue it and wait until ACTIVE.
state=""
if [[ $DRY -eq 0 ]]; then
  state="$("${TPU[@]}" queued-resources describe "$NAME" --zone="$ZONE" \
           --format='value(state.state)' 2>/dev/null || true)"
fi
if [[ -z "$state" ]]; then
  create=("${TPU[@]}" queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE"
          --accelerator-type="$ACCEL" --runtime-version="$VERSION")
  [[ $SPOT -eq 1 ]] && create+=(--spot)
  run "${create[@]}"
else
  echo "reusing queued resource $NAME ($state)"
fi
if [[ $DRY -eq 1 ]]; then
  echo "+ (poll) ${TPU[*]} queued-resources describe $NAME --zone=$ZONE --format='value(state.state)' until ACTIVE"
else
  until [[ "$("${TPU[@]}" queued-resources describe "$NAME" --zone="$ZONE" \
              --format='value(state.state)')" == "ACTIVE" ]]; do
    echo "waiting for $NAME to become ACTIVE ..."; sleep 30
  done
fi

# 2. Code on every worker: a tarball of the tracked tree, unpacked and installed.
TARBALL="/tmp/metalm_jax_code.tgz"
run git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
SSH=("${TPU[@]}" tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all)
run "${TPU[@]}" tpu-vm scp "$TARBALL" "$NAME:metalm_jax_code.tgz" --zone="$ZONE" --worker=all
run "${SSH[@]}" --command="mkdir -p ~/metalm_jax && tar xzf ~/metalm_jax_code.tgz -C ~/metalm_jax \
&& cd ~/metalm_jax && (test -x .venv/bin/python || python3 -m venv .venv) \
&& .venv/bin/pip install -q -e . '$JAX_SPEC'"

# 2b. Training data from a bucket: a gcsfuse mount on every worker.
MOUNT=/tmp/metalm_data  # metalm_jax/data/data_dir.py MOUNT_POINT
if [[ -n "$DATA_BUCKET" ]]; then
  b="${DATA_BUCKET#gs://}"; BUCKET="${b%%/*}"; SUBDIR=""; [[ "$b" == */* ]] && SUBDIR="${b#*/}"
  FUSE="gcsfuse --implicit-dirs -o ro${SUBDIR:+ --only-dir $SUBDIR} $BUCKET $MOUNT"
  run "${SSH[@]}" --command="mountpoint -q $MOUNT || (mkdir -p $MOUNT && $FUSE)"
  EXTRA+=("--config.data.data_dir=$MOUNT")
fi

# 3. The same entry point on all workers; gcloud streams every worker's output.
#    Exit status 42 (metalm_jax/train/preemption.py PREEMPTED_EXIT_CODE) = requeue.
PREEMPTED=42
MAIN=".venv/bin/python -m metalm_jax.main --config=$CONFIG --workdir=$WORKDIR"
for a in "${EXTRA[@]+"${EXTRA[@]}"}"; do MAIN+=" $(printf '%q' "$a")"; done
TRAIN="cd ~/metalm_jax && while true; do $MAIN 2>&1 | tee -a ~/metalm_train.log; \
rc=\${PIPESTATUS[0]}; [ \$rc -eq $PREEMPTED ] || exit \$rc; \
echo 'preempted (exit $PREEMPTED): restarting on the same workdir'; done"
run "${SSH[@]}" --command="$TRAIN"
