"""Launchers: `--dry_run` prints every command they would run."""
import os
import subprocess

from tests.main_helpers import ROOT


def _sh(script, *args):
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                        capture_output=True, text=True, timeout=60)


def test_tpu_pod_dry_run_prints_every_step():
  p = _sh("tpu_pod.sh", "--name=mlm", "--zone=us-west4-a", "--accelerator=v5litepod-16",
          "--config=configs/pretrain_vl.py:size=paper", "--workdir=gs://b/vl", "--spot",
          "--project=proj", "--dry_run", "--", "--config.optimizer.lr=2e-4")
  assert p.returncode == 0, p.stderr
  cmds = [l for l in p.stdout.splitlines() if l.startswith("+")]
  assert cmds[0] == ("+ gcloud --project=proj compute tpus queued-resources create mlm "
                     "--node-id=mlm --zone=us-west4-a --accelerator-type=v5litepod-16 "
                     "--runtime-version=tpu-ubuntu2204-base --spot")
  assert "until ACTIVE" in cmds[1]
  assert cmds[2].startswith("+ git -C ") and "archive" in cmds[2]
  assert "tpu-vm scp /tmp/metalm_jax_code.tgz mlm:metalm_jax_code.tgz" in cmds[3]
  assert "--worker=all" in cmds[3] and "--worker=all" in cmds[4] and "--worker=all" in cmds[5]
  assert "pip\\ install" in cmds[4] and "jax\\[tpu\\]==0.10.2" in cmds[4]
  train = cmds[5].replace("\\", "")
  assert ("python -m metalm_jax.main --config=configs/pretrain_vl.py:size=paper "
          "--workdir=gs://b/vl --config.optimizer.lr=2e-4") in train
  # Restart loop: the "preempted, resume me" status starts it again, any other ends it.
  assert train.count("while true; do") == 1
  assert "rc=${PIPESTATUS[0]}; [ $rc -eq 42 ] || exit $rc;" in train
  assert len(cmds) == 6


def test_tpu_pod_requires_its_arguments():
  p = _sh("tpu_pod.sh", "--name=x", "--dry_run")
  assert p.returncode == 2 and "--zone is required" in p.stderr
  p = _sh("tpu_pod.sh", "--bogus")
  assert p.returncode == 2 and "unknown argument --bogus" in p.stderr


def test_gpu_slurm_dry_run_prints_the_batch_script():
  p = _sh("gpu_slurm.sh", "--nodes=4", "--gpus_per_node=8", "--partition=a100",
          "--config=configs/pretrain_vl.py:size=paper", "--workdir=/shared/run", "--dry_run",
          "--", "--config.batch_size=512")
  assert p.returncode == 0, p.stderr
  out = p.stdout
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=a100", "+ sbatch <batch script>"):
    assert line in out.splitlines(), line
  for line in ("#SBATCH --requeue", "#SBATCH --signal=TERM@120",
               '  scontrol requeue "$SLURM_JOB_ID"'):
    assert line in out.splitlines(), line
  assert "\nrc=$?\nif [[ $rc -eq 42 ]]; then" in out
  srun = [l for l in out.splitlines() if l.startswith("srun ")]
  assert len(srun) == 1 and srun[0].endswith(
      "-m metalm_jax.main --config=configs/pretrain_vl.py:size=paper --workdir=/shared/run "
      "--distributed --config.batch_size=512")
  assert not os.path.exists("/shared/run")  # a dry run creates nothing
  p = _sh("gpu_slurm.sh", "--nodes=0", "--config=c", "--workdir=w", "--dry_run")
  assert p.returncode == 2 and "--nodes=0 must be a positive integer" in p.stderr


def test_data_bucket_is_mounted_with_gcsfuse_and_becomes_data_dir():
  p = _sh("tpu_pod.sh", "--name=mlm", "--zone=z", "--accelerator=v5litepod-16", "--config=c",
          "--workdir=gs://b/vl", "--data_bucket=gs://data/tfds", "--dry_run")
  assert p.returncode == 0, p.stderr
  cmds = [l.replace("\\", "") for l in p.stdout.splitlines() if l.startswith("+")]
  mount = [c for c in cmds if "gcsfuse" in c]
  assert len(mount) == 1 and "--worker=all" in mount[0]
  assert ("mountpoint -q /tmp/metalm_data || (mkdir -p /tmp/metalm_data && gcsfuse "
          "--implicit-dirs -o ro --only-dir tfds data /tmp/metalm_data)") in mount[0]
  assert "--config.data.data_dir=/tmp/metalm_data" in cmds[-1]
  assert cmds.index(mount[0]) < len(cmds) - 1  # mounted before training starts
  p = _sh("gpu_slurm.sh", "--nodes=2", "--config=c", "--workdir=/w", "--data_bucket=gs://data",
          "--dry_run")
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  srun = [l for l in lines if l.startswith("srun ")]
  assert srun[0] == ("srun --ntasks-per-node=1 bash -c 'mountpoint -q /tmp/metalm_data || "
                     "(mkdir -p /tmp/metalm_data && gcsfuse --implicit-dirs -o ro data "
                     "/tmp/metalm_data)'")
  assert srun[1].endswith("--distributed --config.data.data_dir=/tmp/metalm_data")
