"""The real entry point (metalm_jax.main) on the stand-in data of
tests/train_standin.py, for tests that send a signal at a given moment:

    METALM_TEST_HOOK=slow_restore|slow_save METALM_TEST_MARKER=FILE \
        python tests/standin_main.py --config=tests/standin_config.py --workdir=W

slow_restore: a checkpoint restore writes FILE, then waits 3 s before reading.
slow_save: the data-iterator part of a save (Orbax's background thread for
async saves) writes FILE, then waits 3 s.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from tests import train_standin as S  # noqa: E402
from metalm_jax import main  # noqa: E402
from metalm_jax.train import checkpoint as ckpt_lib  # noqa: E402
from metalm_jax.train import trainer  # noqa: E402

HOOK, MARKER = os.environ.get("METALM_TEST_HOOK"), os.environ.get("METALM_TEST_MARKER")


def _mark_and_wait():
  with open(MARKER, "w") as f:
    f.write(str(os.getpid()))
  time.sleep(3)


if HOOK == "slow_restore":
  _restore = ckpt_lib.Checkpointer._restore

  def _slow_restore(self, *a, **k):
    _mark_and_wait()
    return _restore(self, *a, **k)
  ckpt_lib.Checkpointer._restore = _slow_restore
elif HOOK == "slow_save":
  _get_state = ckpt_lib._IterSnapshot.get_state

  def _slow_get_state(self):
    _mark_and_wait()
    return _get_state(self)
  ckpt_lib._IterSnapshot.get_state = _slow_get_state

trainer._default_data = lambda: S

if __name__ == "__main__":
  app.run(main.main, flags_parser=main.parse_flags)
