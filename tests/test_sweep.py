"""The sweep tool (metalm_jax/sweep): grid expansion and its errors, the
printed commands, resume of a half-done sweep through an injectable run
function, the report against the runs' own files, and one sweep of the real
entry point (2 runs of 1 step on the test world)."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from metalm_jax import storage
from metalm_jax.sweep import grid as grid_lib
from metalm_jax.sweep import report as report_lib
from metalm_jax.sweep import runner as runner_lib
from metalm_jax.sweep import state as state_lib
from metalm_jax import run_files
from tests import main_helpers as H

LANG = "configs/pretrain_lang.py:size=tiny"
GRID = "data.spans.ratio=0.15,0.25,0.35;model.encoders.text.connector.type=linear,mlp"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(H.ROOT)  # config paths are relative to the repo, as on the command line


def _sweep_cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "metalm_jax.sweep", *args], cwd=H.ROOT,
                        env=H.env(), capture_output=True, text=True, timeout=timeout)


def test_grid_expands_in_order_with_parsed_values_and_stable_names(tmp_path):
  sweep = state_lib.plan(str(tmp_path), LANG, GRID, ["total_steps=7", "--config.seed=3"])
  names = [r["name"] for r in sweep["runs"]]
  assert names == [f"data.spans.ratio={r},model.encoders.text.connector.type={c}"
                   for r in ("0.15", "0.25", "0.35")
                   for c in ("linear", "mlp")]  # last axis fastest
  first = sweep["runs"][0]
  assert first["values"] == {"data.spans.ratio": 0.15,
                             "model.encoders.text.connector.type": "linear"}
  assert isinstance(first["values"]["data.spans.ratio"], float)  # typed like main's flags
  assert first["total_steps"] == 7 and first["workdir"] == os.path.join(str(tmp_path), names[0])
  assert sweep["fixed"] == ["--config.total_steps=7", "--config.seed=3"]
  # The same arguments give the same names and workdirs again.
  assert sweep == state_lib.plan(str(tmp_path), LANG, GRID, ["total_steps=7", "seed=3"])
  # Unsafe characters become '_'; a long name is cut and ends with a hash of the whole.
  assert grid_lib.run_name({"data.tokenizer": "gs://b/t.model"}) == "data.tokenizer=gs___b_t.model"
  long = {"a" * 80: "1", "b" * 80: "2"}
  name = grid_lib.run_name(long)
  assert len(name) == grid_lib.MAX_NAME and name == grid_lib.run_name(dict(long))
  assert name != grid_lib.run_name({"a" * 80: "1", "b" * 80: "3"})
  assert grid_lib.run_name({}) == grid_lib.BASE_NAME


@pytest.mark.parametrize("grid,fixed,match", [
    ("data.spans.ratioo=0.15,0.25", [], r"--grid axis data\.spans\.ratioo value '0\.15': no such "
     r"field in configs/pretrain_lang\.py:size=tiny .*Did you mean \"ratio\""),
    ("data.spans.ratio=0.15,abc", [], r"--grid axis data\.spans\.ratio value 'abc': .*float"),
    ("total_steps=1,1.5", [], r"--grid axis total_steps value '1\.5'"),
    ("seed=1,2", ["total_stepz=3"], r"fixed override --config\.total_stepz=3: no such field"),
    ("seed=1,2", ["seed=3"], r"--grid axis seed is also a fixed override"),
    ("seed=1,1", [], r"--grid axis seed: a value repeats"),
    ("seed=1,;x=2", [], r"--grid axis seed: empty value"),
    ("model.decoder=1;model.decoder.num_layers=2", [], r"axes model\.decoder and model\.decoder\."
     r"num_layers set the same field"),
    ("seed", [], r"--grid axis 'seed': expected FIELD=V1,V2"),
])
def test_bad_grid_is_named_before_anything_runs(tmp_path, grid, fixed, match):
  with pytest.raises(grid_lib.SweepError, match=match):
    state_lib.plan(str(tmp_path / "s"), LANG, grid, fixed)
  assert not (tmp_path / "s").exists()


@pytest.mark.integration
def test_cli_prints_commands_and_names_a_bad_field(tmp_path):
  root = str(tmp_path / "s")
  p = _sweep_cli(f"--config={LANG}", "--grid=data.spans.ratio=0.15,0.25;seed=1,2",
                 f"--root={root}", "--print_commands", "--set=total_steps=50",
                 "--config.optimizer.lr=1e-3")
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  assert len(lines) == 4
  for line, (ratio, seed) in zip(lines, [("0.15", "1"), ("0.15", "2"), ("0.25", "1"),
                                         ("0.25", "2")]):
    assert shlex.split(line) == [
        "python", "-m", "metalm_jax.main", f"--config={LANG}",
        f"--workdir={root}/data.spans.ratio={ratio},seed={seed}", "--config.total_steps=50",
        "--config.optimizer.lr=1e-3", f"--config.data.spans.ratio={ratio}",
        f"--config.seed={seed}"]
  saved = storage.read_json(os.path.join(root, state_lib.SWEEP_FILE))  # planned, nothing ran
  assert [r["status"] for r in saved["runs"]] == ["pending"] * 4
  assert not any(os.path.exists(r["workdir"]) for r in saved["runs"])
  # A launcher prefix: PREFIX --config --workdir -- OVERRIDES (launch/*.sh).
  cmd = runner_lib.shell_commands(saved, ["bash", "launch/tpu_pod.sh", "--name=n"])[0]
  assert shlex.split(cmd) == ["bash", "launch/tpu_pod.sh", "--name=n", f"--config={LANG}",
                              f"--workdir={root}/data.spans.ratio=0.15,seed=1", "--",
                              "--config.total_steps=50", "--config.optimizer.lr=1e-3",
                              "--config.data.spans.ratio=0.15", "--config.seed=1"]
  bad = _sweep_cli(f"--config={LANG}", "--grid=data.spans.ratioo=0.15", f"--root={tmp_path}/b")
  assert bad.returncode == 1 and not (tmp_path / "b").exists()
  assert "sweep error: --grid axis data.spans.ratioo value '0.15': no such field" in bad.stderr


class FakeMain:
  """Stands in for `python -m metalm_jax.main`: records each call; a run
  listed in `interrupt` leaves a checkpoint dir and exits 42, one in `fail`
  exits 1; otherwise it writes final_metrics.json (loss from its overrides)."""

  def __init__(self, interrupt=(), fail=()):
    self.calls, self.interrupt, self.fail = [], set(interrupt), set(fail)

  def __call__(self, cmd):
    args = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--"))
    workdir = args["workdir"]
    name = os.path.basename(workdir)
    self.calls.append(name)
    if name in self.interrupt:
      self.interrupt.discard(name)
      storage.makedirs(os.path.join(workdir, state_lib.CHECKPOINTS, "3"))
      return runner_lib.PREEMPTED
    if name in self.fail:
      return 1
    ratio = float(args.get("config.data.spans.ratio", 0))
    mlp = args.get("config.model.encoders.text.connector.type") == "mlp"
    run_files.write_results(workdir, {"step": int(args["config.total_steps"]),
                                      "loss": 3.0 - ratio - 0.5 * mlp, "steps_per_sec": 9.0})
    return 0


def test_resume_of_a_half_done_sweep(tmp_path, capsys):
  root = str(tmp_path)
  fixed = ["total_steps=5"]
  grid = "data.spans.ratio=0.15,0.25;model.encoders.text.connector.type=linear,mlp"
  sweep = state_lib.plan(root, LANG, grid, fixed)
  names = [r["name"] for r in sweep["runs"]]
  first = FakeMain(interrupt=[names[1]])
  assert runner_lib.run_all(root, sweep, first) == runner_lib.PREEMPTED  # stops like main
  assert first.calls == names[:2]
  saved = state_lib.load(root)
  assert [r["status"] for r in saved["runs"]] == ["done", "preempted", "pending", "pending"]
  assert saved["runs"][1]["returncode"] == runner_lib.PREEMPTED
  # The same command again: the finished run is skipped, the interrupted one
  # resumed (same command: main resumes from its checkpoints), the rest run.
  again = FakeMain(fail=[names[3]])
  sweep = state_lib.plan(root, LANG, grid, fixed)
  assert [r["status"] for r in sweep["runs"]][:2] == ["done", "preempted"]  # kept from sweep.json
  assert runner_lib.run_all(root, sweep, again) == 1  # one failed; the sweep went on
  assert again.calls == names[1:]
  out = capsys.readouterr().out
  assert f"run 1/4 {names[0]}: finished already" in out
  assert f"run 2/4 {names[1]}: resuming from the checkpoints" in out
  assert [r["status"] for r in state_lib.load(root)["runs"]] == ["done", "done", "done", "failed"]
  third = FakeMain()
  assert runner_lib.run_all(root, state_lib.plan(root, LANG, grid, fixed), third) == 0
  assert third.calls == names[3:]
  assert runner_lib.run_all(root, state_lib.plan(root, LANG, grid, fixed), third) == 0
  assert third.calls == names[3:]  # nothing left to run
  # Another grid for the same DIR is refused, naming what changed; --force
  # replaces it, and more steps make the finished runs run (resume) again.
  with pytest.raises(grid_lib.SweepError, match=r"holds another sweep:\n  fixed: "
                     r"\[\"--config.total_steps=5\"\] \(in sweep.json\) != "
                     r"\[\"--config.total_steps=9\"\] \(now\)\nuse another --root, or --force"):
    state_lib.plan(root, LANG, grid, ["total_steps=9"])
  longer = FakeMain()
  sweep = state_lib.plan(root, LANG, grid, ["total_steps=9"], force=True)
  assert runner_lib.run_all(root, sweep, longer) == 0 and longer.calls == names
  assert state_lib.load(root)["fixed"] == ["--config.total_steps=9"]


def test_report_numbers_are_the_runs_final_metrics(tmp_path):
  root = str(tmp_path)
  grid = "data.spans.ratio=0.15,0.25;model.encoders.text.connector.type=linear,mlp"
  sweep = state_lib.plan(root, LANG, grid, ["total_steps=5"])
  runs = sweep["runs"]
  assert runner_lib.run_all(root, sweep, FakeMain(fail=[runs[3]["name"]])) == 1
  # Evaluator results: the latest evals/step_<N>.json (10 > 2 numerically).
  for i, run in enumerate(runs[:3]):
    for step, acc in ((2, 0.1), (10, 0.25 * (i + 1))):
      storage.write_json(os.path.join(run["workdir"], "evals", f"step_{step}.json"),
                         {"step": step, "results": {"vqa": {"accuracy": acc}}})
  paths = report_lib.write(root, state_lib.load(root))
  rep = storage.read_json(paths["json"])
  assert rep["metrics"] == ["loss", "vqa/accuracy"]  # not steps_per_sec, not data/*
  for i, (row, run) in enumerate(zip(rep["rows"], runs)):
    assert row["name"] == run["name"] and row["values"] == run["values"]
    final = run_files.read_results(run["workdir"])
    if i < 3:
      assert row["status"] == "done" and row["evals_step"] == 10
      assert row["metrics"]["loss"] == final["loss"]
      assert row["metrics"]["vqa/accuracy"] == 0.25 * (i + 1)
    else:
      assert row["status"] == "failed" and final is None and row["metrics"] == {}
  md = storage.read_text(paths["md"]).splitlines()
  assert md[4] == ("| run | data.spans.ratio | model.encoders.text.connector.type | status | "
                   "step | loss | vqa/accuracy |")
  table = [line.split(" | ") for line in md[6:10]]
  for cells, run in zip(table[:3], runs):
    final = run_files.read_results(run["workdir"])
    assert cells[1:4] == [run["overrides"]["data.spans.ratio"],
                          run["overrides"]["model.encoders.text.connector.type"], "done"]
    assert cells[5] == f"{final['loss']:.4f}"
  assert table[3][3:] == ["failed", "-", "-", "- |"]
  assert storage.read_bytes(paths["png"])[:8] == b"\x89PNG\r\n\x1a\n"
  # A sweep directory copied elsewhere reports from its new place.
  moved = str(tmp_path.parent / "moved")
  shutil.copytree(root, moved)
  rows = storage.read_json(report_lib.write(moved, state_lib.load(moved))["json"])["rows"]
  assert [r["workdir"] for r in rows] == [os.path.join(moved, r["name"]) for r in runs]
  assert [r["metrics"] for r in rows] == [r["metrics"] for r in rep["rows"]]
  # --metrics picks the columns; one that no run has is named.
  only = report_lib.write(root, state_lib.load(root), ["steps_per_sec"])
  assert storage.read_json(only["json"])["metrics"] == ["steps_per_sec"]
  with pytest.raises(grid_lib.SweepError, match=r"--metrics eval_lossy: in no run's results; "
                     r"available: loss,step,steps_per_sec,vqa/accuracy"):
    report_lib.write(root, state_lib.load(root), ["eval_lossy"])


def test_sweep_constants_match_the_trainer():
  from metalm_jax.train import checkpoint as ckpt_lib
  from metalm_jax.train import preemption
  assert state_lib.CHECKPOINTS == ckpt_lib.CKPT_SUBDIR
  assert runner_lib.PREEMPTED == preemption.PREEMPTED_EXIT_CODE


@pytest.mark.integration
def test_sweep_of_the_real_main(tmp_path):
  """2 runs (seed=0,1: one compiled program, the second from the compile
  cache) of 1 step each on the test world; then the same command skips both."""
  root, data = str(tmp_path / "sweep"), str(tmp_path / "data")
  config, *small = H.SMALL
  args = [config, "--grid=seed=0,1", f"--root={root}", "--set=total_steps=1",
          *small, f"--config.data.data_dir={data}"]
  p = _sweep_cli(*args, timeout=400)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  rep = storage.read_json(os.path.join(root, report_lib.REPORT_JSON))
  assert [r["name"] for r in rep["rows"]] == ["seed=0", "seed=1"]
  losses = []
  for row in rep["rows"]:
    final = run_files.read_results(row["workdir"])
    assert row["status"] == "done" and final["step"] == 1
    assert row["metrics"]["loss"] == final["loss"]
    assert json.loads(storage.read_text(os.path.join(row["workdir"], "config.json")))[
        "seed"] == row["values"]["seed"]
    losses.append(final["loss"])
  assert losses[0] != losses[1]  # the seed reached the runs
  again = _sweep_cli(*args)
  assert again.returncode == 0, again.stderr
  assert again.stdout.count("finished already") == 2 and "starting" not in again.stdout


def test_resume_decides_by_final_metrics_not_by_the_recorded_status(tmp_path):
  """Runs finished elsewhere (printed commands) or whose status was never
  saved are skipped; a run recorded `done` without final metrics runs again."""
  root = str(tmp_path)
  grid = "data.spans.ratio=0.15,0.25,0.35"
  sweep = state_lib.plan(root, LANG, grid, ["total_steps=5"])
  names = [r["name"] for r in sweep["runs"]]
  runs = sweep["runs"]
  # 0: finished from a printed command (status still pending); 1: finished, but
  # the sweep crashed before saving its status (running); 2: recorded done,
  # its workdir lost.
  run_files.write_results(runs[0]["workdir"], {"step": 5, "loss": 1.0})
  run_files.write_results(runs[1]["workdir"], {"step": 5, "loss": 1.0})
  runs[0]["status"], runs[1]["status"], runs[2]["status"] = "pending", "running", "done"
  state_lib.save(root, sweep)
  fake = FakeMain()
  assert runner_lib.run_all(root, state_lib.plan(root, LANG, grid, ["total_steps=5"]), fake) == 0
  assert fake.calls == [names[2]]
  # Final metrics short of total_steps (an earlier, shorter run) do not count.
  run_files.write_results(runs[0]["workdir"], {"step": 4, "loss": 1.0})
  fake = FakeMain()
  assert runner_lib.run_all(root, state_lib.plan(root, LANG, grid, ["total_steps=5"]), fake) == 0
  assert fake.calls == [names[0]]
