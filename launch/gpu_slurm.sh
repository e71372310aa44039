#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node owning all its
# GPUs; jax.distributed.initialize() reads the SLURM environment
# (metalm_jax/main.py --distributed). Writes a batch script and submits it.
#
#   bash launch/gpu_slurm.sh --nodes=4 --gpus_per_node=8 --partition=gpu --time=48:00:00 \
#       --config=configs/pretrain_vl.py:size=paper --workdir=/shared/runs/vl \
#       [--venv=/shared/metalm_jax/.venv] [--data_bucket=gs://BUCKET/tfds] [--dry_run] \
#       [-- --config.batch_size=512 ...]
#   bash launch/gpu_slurm.sh --help
#
# --data_bucket mounts a bucket read-only with gcsfuse at /tmp/metalm_data on
# every node and passes --config.data.data_dir=/tmp/metalm_data (array_record
# reads local files only: metalm_jax/data/data_dir.py).
# --dry_run prints the batch script and the sbatch command without submitting.
# Preemption: the job is --requeue-able and SLURM sends SIGTERM to the job step
# 120 s before its time limit; the trainer saves and exits with status 42
# ("preempted, resume me"), and the batch script then requeues the job
# (scontrol requeue), which resumes from the workdir's latest checkpoint.
# The code and venv must be on a file system shared by the nodes
# (bash launch/setup_venv.sh cuda12: jax[cuda12] of the tested version).
set -euo pipefail

NODES=1 GPUS=8 PARTITION="" TIME="24:00:00" CONFIG="" WORKDIR="" DRY=0 VENV="" DATA_BUCKET=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) NODES="${1#*=}" ;;
    --gpus_per_node=*) GPUS="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --data_bucket=*) DATA_BUCKET="${1#*=}" ;;
    --dry_run) DRY=1 ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;  # this header is the usage
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_slurm.sh: unknown argument $1 (--help: usage)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$CONFIG" ]] || { echo "gpu_slurm.sh: --config is required" >&2; exit 2; }
[[ -n "$WORKDIR" ]] || { echo "gpu_slurm.sh: --workdir is required" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_slurm.sh: --nodes=$NODES must be a positive integer" >&2; exit 2; }
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_slurm.sh: --gpus_per_node=$GPUS must be a positive integer" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREEMPTED=42  # metalm_jax/train/preemption.py PREEMPTED_EXIT_CODE: "preempted, resume me"
VENV="${VENV:-$ROOT/.venv}"
MOUNT=/tmp/metalm_data  # metalm_jax/data/data_dir.py MOUNT_POINT
MOUNT_STEP=""
if [[ -n "$DATA_BUCKET" ]]; then
  b="${DATA_BUCKET#gs://}"; BUCKET="${b%%/*}"; SUBDIR=""; [[ "$b" == */* ]] && SUBDIR="${b#*/}"
  FUSE="gcsfuse --implicit-dirs -o ro${SUBDIR:+ --only-dir $SUBDIR} $BUCKET $MOUNT"
  MOUNT_STEP="srun --ntasks-per-node=1 bash -c 'mountpoint -q $MOUNT || (mkdir -p $MOUNT && $FUSE)'"
  EXTRA=("--config.data.data_dir=$MOUNT" "${EXTRA[@]+"${EXTRA[@]}"}")
fi
ARGS="--config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR") --distributed"
for a in "${EXTRA[@]+"${EXTRA[@]}"}"; do ARGS+=" $(printf '%q' "$a")"; done

SCRIPT="$(cat <<EOS
#!/usr/bin/env bash
#SBATCH --job-name=metalm_jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --output=$WORKDIR/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=TERM@120
${PARTITION:+#SBATCH --partition=$PARTITION}
set -uo pipefail
cd $ROOT
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
$MOUNT_STEP
srun --kill-on-bad-exit=1 $VENV/bin/python -m metalm_jax.main $ARGS
rc=\$?
if [[ \$rc -eq $PREEMPTED ]]; then  # preempted, checkpoint saved: run again
  echo "preempted (exit $PREEMPTED): requeueing job \$SLURM_JOB_ID"
  scontrol requeue "\$SLURM_JOB_ID"
  exit 0
fi
exit \$rc
EOS
)"

if [[ $DRY -eq 1 ]]; then
  echo "# batch script:"
  echo "$SCRIPT"
  echo "+ mkdir -p $WORKDIR"
  echo "+ sbatch <batch script>"
  exit 0
fi
mkdir -p "$WORKDIR"
FILE="$WORKDIR/metalm_slurm.sbatch"
echo "$SCRIPT" > "$FILE"
echo "+ sbatch $FILE"
sbatch "$FILE"
