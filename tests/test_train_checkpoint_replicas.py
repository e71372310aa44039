"""config.checkpoint.replica_parallel: Orbax's replica-parallel save is off on
CPU by default (it slices every replicated array per device, ~10x slower on
8 CPU devices) and the setting reaches the registered jax.Array handler; a
state saved either way restores to the same arrays."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from metalm_jax.train import checkpoint as ckpt_lib


@pytest.mark.parametrize("mode,backend,want", [
    ("auto", "cpu", False), ("auto", "gpu", False), ("auto", "tpu", True),
    ("true", "cpu", True), ("False", "tpu", False), (True, "cpu", True)])
def test_modes(mode, backend, want):
  assert ckpt_lib.replica_parallel_on(mode, backend) is want


def test_bad_value_is_named():
  with pytest.raises(ValueError, match=r"config.checkpoint.replica_parallel='sometimes'"):
    ckpt_lib.replica_parallel_on("sometimes", "cpu")


@pytest.mark.parametrize("mode", ["auto", True])
def test_setting_reaches_orbax_and_round_trips(tmp_path, mode):
  try:
    on = ckpt_lib.set_replica_parallel(mode)
    assert on is (mode is True)  # auto on this CPU host: off
    assert ocp.type_handlers.get_type_handler(jax.Array)._use_replica_parallel is on
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    tree = {"replicated": jax.device_put(x, NamedSharding(mesh, PartitionSpec())),
            "sharded": jax.device_put(-x, NamedSharding(mesh, PartitionSpec("fsdp")))}
    with ocp.StandardCheckpointer() as ck:
      ck.save(tmp_path / "c", tree)
      ck.wait_until_finished()
      back = ck.restore(tmp_path / "c", jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree))
    np.testing.assert_array_equal(back["replicated"], x)
    np.testing.assert_array_equal(back["sharded"], -x)
  finally:
    ckpt_lib.set_replica_parallel("auto")
