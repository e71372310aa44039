"""The launchers' "preempted, resume me" status is the trainer's constant."""
import re

from metalm_jax.train import preemption
from tests.main_helpers import ROOT


def test_launchers_use_the_trainers_preempted_status():
  for script in ("tpu_pod.sh", "gpu_slurm.sh"):
    with open(f"{ROOT}/launch/{script}") as f:
      assert re.findall(r"^PREEMPTED=(\d+)", f.read(), re.M) == [
          str(preemption.PREEMPTED_EXIT_CODE)], script
