"""Train-step metrics stay on the device until a log step (train/loop_metrics.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax.train import loop_metrics


def _step_metrics(i):
  return {"loss": jnp.float32(1.0 + i), "accuracy": jnp.float32(0.1 * i),
          "grad_norm": jnp.float32(2.0 * i), "learning_rate": jnp.float32(1e-3 * i),
          "trained_tokens": jnp.float32(10.0)}


def test_no_device_to_host_transfer_between_log_steps():
  sm = loop_metrics.StepMetrics(block_every_step=False)  # the accelerator path
  ms = [_step_metrics(i) for i in range(4)]
  with jax.transfer_guard_device_to_host("disallow"):
    for i, m in enumerate(ms):
      sm.add(i + 1, m)  # would raise on any device -> host copy
  got = sm.fetch(4)
  np.testing.assert_allclose(got["loss"], np.mean([1.0, 2.0, 3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(got["accuracy"], np.mean([0.0, 0.1, 0.2, 0.3]), rtol=1e-6)
  np.testing.assert_allclose(got["grad_norm"], np.mean([0.0, 2.0, 4.0, 6.0]), rtol=1e-6)
  np.testing.assert_allclose(got["learning_rate"], 3e-3, rtol=1e-6)  # the last value
  sm.add(5, _step_metrics(5))  # a new interval starts empty
  np.testing.assert_allclose(sm.fetch(5)["loss"], 6.0)


def test_non_finite_loss_names_its_step():
  sm = loop_metrics.StepMetrics(block_every_step=True)  # the CPU path
  for step, loss in ((11, 1.0), (12, float("nan")), (13, 2.0)):
    sm.add(step, {**_step_metrics(1), "loss": jnp.float32(loss)})
  with pytest.raises(FloatingPointError, match="loss is nan at step 12"):
    sm.fetch(13)
