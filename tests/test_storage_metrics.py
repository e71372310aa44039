"""metalm_jax/storage.py and the metrics.jsonl scheme (train/metrics_log.py),
on a local dir and on the GCS emulator (gs://)."""
import json
import logging

import pytest

from metalm_jax import storage
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import metrics_log
from metalm_jax import run_files


@pytest.fixture(params=["local", pytest.param("gs", marks=pytest.mark.integration)])
def workdir(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "run")
  return request.getfixturevalue("gcs_bucket") + "/run"


def _steps(workdir):
  return [r["step"] for r in metrics_log.read_metrics(workdir)]


def test_chunks_read_back_as_one_stream_and_merged_file(workdir):
  log = metrics_log.MetricsLog(workdir, chunk_records=3)
  log.rewind(None)
  for s in range(1, 8):
    log.write({"step": s, "loss": 1.0 / s})
  names = sorted(p.name for p in (storage.path(workdir) / "metrics").iterdir())
  assert names == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
  assert _steps(workdir) == list(range(1, 8))
  merged = storage.path(workdir) / "metrics.jsonl"
  if storage.is_remote(workdir):  # refreshed at chunk seals (6 records) and at close
    assert [json.loads(l)["step"] for l in merged.read_text().splitlines()] == list(range(1, 7))
  log.close()
  lines = merged.read_text().splitlines()
  assert [json.loads(l) for l in lines] == metrics_log.read_metrics(workdir)
  assert [json.loads(l)["step"] for l in lines] == list(range(1, 8))


def test_rewind_to_step_and_to_nothing(workdir):
  log = metrics_log.MetricsLog(workdir, chunk_records=3)
  for s in range(1, 9):
    log.write({"step": s, "loss": float(s)})
  # A restart from step 4: later records go (chunks 1, 2 rewritten/removed).
  log = metrics_log.MetricsLog(workdir, chunk_records=3)
  log.rewind(4)
  assert _steps(workdir) == [1, 2, 3, 4]
  for s in range(5, 8):
    log.write({"step": s, "loss": float(s)})
  log.close()
  assert _steps(workdir) == list(range(1, 8))
  assert [json.loads(l)["step"] for l in
          (storage.path(workdir) / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))
  # A restart that finds no checkpoint: nothing survives.
  metrics_log.MetricsLog(workdir, chunk_records=3).rewind(None)
  assert _steps(workdir) == []
  assert (storage.path(workdir) / "metrics.jsonl").read_text() == ""


def test_no_append_mode_anywhere(workdir, monkeypatch):
  """gcsfs turns append into overwrite: the writer must never open with 'a'."""
  from etils import epath
  real_open = type(epath.Path("/")).open
  modes = []

  def spy(self, mode="r", **kw):
    modes.append(mode)
    return real_open(self, mode, **kw)

  monkeypatch.setattr(type(epath.Path("/")), "open", spy)
  log = metrics_log.MetricsLog(workdir, chunk_records=2)
  for s in range(1, 6):
    log.write({"step": s})
  log.close()
  assert modes and not any("a" in m for m in modes)
  assert _steps(workdir) == [1, 2, 3, 4, 5]


def test_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  p = tmp_path / "metrics.jsonl"
  p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in metrics_log.read_metrics(str(tmp_path))] == [1, 2]
  assert "torn last line" in caplog.text
  p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ValueError, match="line 2 is not JSON"):
    metrics_log.read_metrics(str(tmp_path))


def test_plotting_failure_is_a_warning(tmp_path, caplog, monkeypatch):
  w = metrics_lib.Writer(str(tmp_path))
  w.write(1, {"loss": 2.0})
  w.close()
  assert metrics_lib.plot_losses_or_warn(str(tmp_path)).endswith("loss_curve.png")

  def broken(workdir):
    raise RuntimeError("no display")

  monkeypatch.setattr(metrics_lib, "plot_losses", broken)
  with caplog.at_level(logging.WARNING):
    assert metrics_lib.plot_losses_or_warn(str(tmp_path)) is None
  assert "loss curve not written (RuntimeError: no display)" in caplog.text


@pytest.mark.integration
def test_writer_tensorboard_and_png_on_gcs(gcs_bucket):
  work = gcs_bucket + "/tb_run"
  w = metrics_lib.Writer(work)
  w.rewind(None)
  w.write(1, {"loss": 2.0})
  w.write(2, {"loss": 1.0, "eval_loss": 1.5})
  w.close()
  events = list((storage.path(work) / "tensorboard").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
  assert events[0].stat().length > 0
  png = metrics_lib.plot_losses(work)
  assert png == work + "/loss_curve.png"
  assert storage.read_bytes(png)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_run_config_names_the_tokenizer_inside_the_workdir(tmp_path, gcs_bucket):
  import ml_collections
  tok = tmp_path / "sp.model"
  tok.write_bytes(b"model-bytes")
  cfg = ml_collections.ConfigDict({"data": {"tokenizer": str(tok)}, "model": {"x": 1}})
  work = gcs_bucket + "/cfg_run"
  run_files.write_run_config(cfg, work, str(tok))
  raw = storage.read_json(work + "/config.json")
  assert raw["data"]["tokenizer"] == "tokenizer.model"  # a name inside the workdir
  assert storage.read_bytes(work + "/tokenizer.model") == b"model-bytes"
  # Copied elsewhere (here: to a local dir), it still resolves inside itself.
  local = tmp_path / "copied"
  for name in ("config.json", "tokenizer.model"):
    storage.copy(f"{work}/{name}", local / name)
  got = run_files.load_run_config(str(local))["data"]["tokenizer"]
  assert got == str(local / "tokenizer.model")
  assert run_files.load_run_config(work)["data"]["tokenizer"] == work + "/tokenizer.model"


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX would import torch (3-4 s per training start); the Writer
  hides it for that import, writes events, and torch stays importable."""
  import subprocess
  import sys
  code = (
      "import sys, glob\n"
      "from metalm_jax.train import metrics as m\n"
      f"w = m.Writer({str(tmp_path)!r}); w.write(1, {{'loss': 2.5}}); w.close()\n"
      "assert 'torch' not in sys.modules, 'torch was imported'\n"
      f"assert glob.glob({str(tmp_path)!r} + '/tensorboard/events.*'), 'no events'\n"
      "import importlib.util; assert importlib.util.find_spec('torch') is not None\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(tmp_path.parent), timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]


def test_pending_write_failures_do_not_bury_the_storage_error(capsys):
  """After a StorageError ends a run, asyncio's 'Future exception was never
  retrieved' records (one per pending write of the failed save) are dropped
  and counted; one line on stderr names the error; other asyncio records pass."""
  log = logging.getLogger("asyncio")
  seen = []

  class Keep(logging.Handler):
    def emit(self, record):
      seen.append(record.getMessage())

  keep = Keep()
  log.addHandler(keep)
  f = storage.quiet_pending_writes("storage error while saving: boom")
  try:
    for i in range(3):
      log.error("Future exception was never retrieved\nfuture: <Future %d>", i)
    log.error("Task was destroyed but it is pending!")
  finally:
    log.removeFilter(f)
    log.removeHandler(keep)
  assert f.dropped == 3
  assert seen == ["Task was destroyed but it is pending!"]
  err = capsys.readouterr().err
  assert err.count("not repeated here") == 1
  assert err.strip().endswith("The run ended on: storage error while saving: boom")
