"""Where training data can live.

Training reads TFDS array_record files through array_record / riegeli, which
read local (or locally mounted) files only: with the pinned array-record
0.8.6 a gs:// path never yields a record (tested against a GCS emulator: the
reader hangs; upstream array_record issue 120, riegeli issue 31). So a gs://
data_dir stops the run at start-up with one line naming the supported ways:
mount the bucket with gcsfuse on every worker (launch/tpu_pod.sh and
launch/gpu_slurm.sh `--data_bucket=BUCKET` do that and point data_dir at the
mount) or copy the data set to a local disk.
"""
from __future__ import annotations

from metalm_jax import storage

MOUNT_POINT = "/tmp/metalm_data"  # where the launchers mount --data_bucket


def check_data_dir(data_cfg) -> None:
  """Raises ValueError (naming config.data.data_dir) for a remote data dir."""
  data_dir = data_cfg.get("data_dir") or ""
  if storage.is_remote(data_dir):
    raise ValueError(
        f"config.data.data_dir={data_dir!r}: array_record cannot read object-store paths; "
        f"mount the bucket with gcsfuse on every worker (launch/tpu_pod.sh or "
        f"launch/gpu_slurm.sh --data_bucket=BUCKET mounts it at {MOUNT_POINT} and sets "
        f"data_dir) or copy the data set to a local disk")
