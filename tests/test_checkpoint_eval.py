"""metalm_jax/checkpoint_eval.py: the trainer's evaluators on an export dir
and on a workdir of the same params give the trainer's own results (an
in-process `run_evals` over the run config), rows worst first by the
per-example score, the examples' images, and a side-by-side comparison."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from metalm_jax import checkpoint_eval as CE
from metalm_jax.convert import export
from metalm_jax.data import prepare
from metalm_jax.evaluate import evaluators
from metalm_jax.models import metalm
from tests import world_config

pytest.importorskip("pycocoevalcap")

EVALS = dict(
    vqa=dict(type="vqa", source="world_vqa", num_examples=6, batch_size=4, max_new_tokens=3,
             num_baseline_examples=8),
    caption=dict(type="caption", source="world_caption", num_examples=3, batch_size=4,
                 max_new_tokens=4, meteor=False, num_baseline_examples=8),
    loss=dict(type="loss", num_batches=1, batch_size=4))


def _write_workdir(cfg, boxed, workdir, step):
  """A training workdir: the run config and one Orbax checkpoint at `step`."""
  import optax
  import orbax.checkpoint as ocp
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(cfg.to_dict(), f)
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                              item_names=("state", "data_iter"))
  params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
  state = {"params": boxed, "step": np.int32(step), "opt_state": optax.sgd(0.1).init(params)}
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         data_iter=ocp.args.JsonSave({"pos": step})))
  mgr.wait_until_finished()
  mgr.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ckpt_eval")
  env = world_config.small_eval_env(str(tmp / "data"))
  cfg = env.config
  tok_path = prepare.ensure_prepared(cfg.data, cfg.model.decoder.vocab_size)
  out = {}
  for key in (3, 4):  # two models: the second for the comparison
    boxed = metalm.init_variables(env.model, jax.random.key(key), 1, 8)["params"]
    params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
    export.export_model(cfg.model, params, str(tmp / f"export{key}"), seq_len=16,
                        tokenizer=tok_path, image_mean=cfg.data.image_mean,
                        image_std=cfg.data.image_std, hf_decoder=False)
    out[key] = dict(params=params, boxed=boxed, export=str(tmp / f"export{key}"))
  run_cfg = cfg.copy_and_resolve_references()
  run_cfg.data.tokenizer = tok_path
  _write_workdir(run_cfg, out[3]["boxed"], str(tmp / "workdir"), 5)
  # The trainer's own results for the first model.
  ref_cfg = cfg.copy_and_resolve_references()
  ref_cfg.evals = EVALS
  ref = evaluators.run_evals(ref_cfg, env.model, out[3]["params"], 0, str(tmp / "ref"))
  data = dict(data_dir=cfg.data.data_dir, world="test")
  return dict(tmp=tmp, cfg=cfg, out=out, ref=ref, ref_dir=str(tmp / "ref"), data=data,
              workdir=str(tmp / "workdir"))


def _flat(res):
  return {f"{n}/{k}": v for n, r in res.results.items() for k, v in r.items()}


def test_export_and_workdir_give_the_trainers_results(setup, tmp_path, capsys):
  a = CE.evaluate(setup["out"][3]["export"], EVALS, data=setup["data"],
                  out_dir=str(tmp_path / "a"))
  assert a.step == 0
  assert _flat(a) == pytest.approx(setup["ref"], nan_ok=True)
  w = CE.evaluate(setup["workdir"], EVALS, data=dict(data_dir=setup["data"]["data_dir"]),
                  out_dir=str(tmp_path / "w"))
  assert w.step == 5 and _flat(w) == _flat(a)
  # The predictions files the trainer wrote, sorted worst first by the row score.
  ref_rows = evaluators.read_predictions(setup["ref_dir"], "vqa", 0)
  assert sorted(r["index"] for r in a.rows["vqa"]) == sorted(r["index"] for r in ref_rows)
  scores = [r["score"] for r in a.rows["vqa"]]
  assert scores == sorted(scores) and scores == sorted(r["accuracy"] for r in ref_rows)
  assert np.mean(scores) == pytest.approx(a.results["vqa"]["accuracy"])
  cider = [r["score"] for r in a.rows["caption"]]
  assert cider == sorted(cider) and np.mean(cider) == pytest.approx(a.results["caption"]["CIDEr"])
  assert a.rows["loss"] == []
  assert (tmp_path / "a" / "evals" / "step_0.json").exists()
  assert not os.path.exists(os.path.join(setup["out"][3]["export"], "evals"))
  # The example's image is the world scene's.
  row = a.rows["vqa"][0]
  media = CE.example_media(a, "vqa", row["index"])
  record = prepare.world_records(setup["cfg"].data, "validation")[row["index"]]
  assert list(media) == ["image"] and media["image"] == record["image"]
  assert media["image"] != prepare.world_records(setup["cfg"].data, "validation")[
      row["index"] + 1]["image"]
  table = CE.metrics_table(a)
  assert {(t["evaluator"], t["metric"]) for t in table} == {tuple(k.split("/")) for k in _flat(a)}
  # The progress bar went by (tqdm writes to stderr).
  assert "evaluators" in capsys.readouterr().err


def test_compare_two_models(setup, tmp_path):
  a = CE.evaluate(setup["out"][3]["export"], {"vqa": EVALS["vqa"]}, data=setup["data"],
                  out_dir=str(tmp_path / "a"), progress=False)
  b = CE.evaluate(setup["out"][4]["export"], {"vqa": EVALS["vqa"]}, data=setup["data"],
                  out_dir=str(tmp_path / "b"), progress=False)
  rows = CE.compare(a, b)
  assert {r["metric"] for r in rows} == set(a.results["vqa"])
  for r in rows:
    assert r["a"] == a.results["vqa"][r["metric"]] and r["b"] == b.results["vqa"][r["metric"]]
    assert r["diff"] == pytest.approx(r["b"] - r["a"], nan_ok=True)
  pairs = CE.paired_rows(a, b, "vqa")
  assert len(pairs) == len(a.rows["vqa"])
  drops = [p["score_b"] - p["score_a"] for p in pairs]
  assert drops == sorted(drops)
  by_index = {r["index"]: r for r in b.rows["vqa"]}
  assert all(p["prediction_b"] == by_index[p["index"]]["prediction"] for p in pairs)


def test_sort_rows_and_plain_progress(monkeypatch, capsys):
  rows = [dict(index=0, accuracy=1.0), dict(index=1, accuracy=float("nan")),
          dict(index=2, accuracy=0.0), dict(index=3, accuracy=0.0)]
  assert [r["index"] for r in CE.sort_rows(rows, "vqa")] == [2, 3, 0, 1]
  assert CE.sort_rows(rows, "loss") == rows
  import builtins
  real = builtins.__import__

  def no_tqdm(name, *a, **k):
    if name.startswith("tqdm"):
      raise ImportError(name)
    return real(name, *a, **k)
  monkeypatch.setattr(builtins, "__import__", no_tqdm)
  assert list(CE._progress(["a", "b"], True)) == ["a", "b"]
  assert capsys.readouterr().out == "[1/2] evaluator a\n[2/2] evaluator b\n"


def test_errors(setup):
  with pytest.raises(ValueError, match="export dir"):
    CE.load_model(setup["out"][3]["export"], step=3)
  with pytest.raises(ValueError, match="unknown"):
    CE.evaluate(setup["out"][3]["export"], {"x": dict(type="nope")}, data=setup["data"])
