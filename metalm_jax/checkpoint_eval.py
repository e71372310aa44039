"""The trainer's evaluators on a model a user has: a training workdir or an
export dir (the Predictor's sources), for notebooks and scripts.

    res = evaluate("workdir_local_vl", {"vqa": dict(type="vqa", source="world_vqa",
                                                    num_examples=32)}, out_dir="/tmp/ev")
    res.results               # {eval name: {metric: value}}, as the trainer logs them
    res.rows["vqa"]           # the predictions file's rows, worst first
    compare(res_a, res_b)     # [{evaluator, metric, a, b, diff}]

Each evaluator runs through `evaluators.run_evals` (the trainer's code path:
`common.EVALUATORS`, its examples, decoding and metrics), which writes its
results and predictions under `out_dir/evals/` (`runner.write_results`);
the rows are read back with `runner.read_predictions`. Params are restored
as the Predictor restores them (convert/predictor.py: an export's params, or
the params of a workdir's latest checkpoint step). The run config is the
workdir's own (config.json); an export dir carries only its model, so its
data section is the tiny VL preset (`presets.data_config("vl", "tiny")`)
with the export's tokenizer and image normalisation (a workdir's config
takes the preset's values only for data fields it lacks). `data` overrides data
fields of either (e.g. `data_dir`, `world`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from metalm_jax import params_io, presets, storage
from metalm_jax.convert import export as export_lib
from metalm_jax.convert import predictor as predictor_lib
from metalm_jax.data import formats as formats_lib
from metalm_jax.data import pipeline, sources
from metalm_jax.evaluate import evaluators
from metalm_jax.models import metalm

# The per-example score of each evaluator type in its predictions rows (the
# metric is their mean; higher is better). Types without one are not sorted.
SCORE_KEYS = {"vqa": "accuracy", "caption": "CIDEr", "classify": "correct_generate"}


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` returns."""
  model_dir: str
  step: int
  results: Dict[str, Dict[str, float]]    # {eval name: {metric: value}}
  rows: Dict[str, List[Dict[str, Any]]]   # {eval name: prediction rows, worst first}
  config: ml_collections.ConfigDict       # the run config the evaluators ran under


def is_export(model_dir: str) -> bool:
  return storage.exists(storage.join(model_dir, params_io.PARAMS_FILE))


def load_model(model_dir: str, step: Optional[int] = None,
               data: Optional[Mapping[str, Any]] = None):
  """(run config, params, step) of an export dir or a training workdir
  (`step`: a workdir's checkpoint step, default the latest; an export is step 0)."""
  if is_export(model_dir):
    if step is not None:
      raise ValueError(f"step={step} given, but {model_dir!r} is an export dir")
    served = predictor_lib.load_export(model_dir)
    cfg = ml_collections.ConfigDict(dict(model=served.model_cfg.to_dict(),
                                         data=presets.data_config("vl", "tiny")))
    cfg.data.tokenizer = served.tokenizer or ""
    cfg.data.image_mean = list(served.norm["image_mean"])
    cfg.data.image_std = list(served.norm["image_std"])
    if cfg.data.spans.encoder and cfg.data.spans.encoder not in cfg.model.encoders:
      cfg.data.spans.encoder = ""  # a model without that text encoder gets plain text
    params, step = served.params, 0
  else:
    run_cfg = dict(export_lib.load_run_config(model_dir))
    # Data fields the run config lacks (an older or hand-written one) are the preset's.
    run_cfg["data"] = {**presets.data_config("vl", "tiny").to_dict(), **run_cfg.get("data", {})}
    cfg = ml_collections.ConfigDict(run_cfg)
    params, step = export_lib.restore_checkpoint_params(model_dir, step)
  for key, value in dict(data or {}).items():
    cfg.data[key] = value
  cfg.evals = ml_collections.ConfigDict()
  return cfg, params, int(step)


def _progress(items: Sequence[str], show: bool):
  """`items` under a tqdm bar when tqdm is installed, else with a printed line each."""
  if not show:
    return items
  try:
    from tqdm.auto import tqdm
  except ImportError:
    def plain():
      for i, item in enumerate(items):
        print(f"[{i + 1}/{len(items)}] evaluator {item}", flush=True)
        yield item
    return plain()
  return tqdm(items, desc="evaluators", unit="eval")


def sort_rows(rows: List[Dict[str, Any]], ev_type: str) -> List[Dict[str, Any]]:
  """Prediction rows worst first by the type's per-example score (`score`
  added to each row; stable, so ties keep record order); unscored types as given."""
  key = SCORE_KEYS.get(ev_type)
  if key is None or not rows or key not in rows[0]:
    return list(rows)
  out = [dict(r, score=float(r[key])) for r in rows]
  return sorted(out, key=lambda r: (math.isnan(r["score"]), r["score"]))


def evaluate(model_dir: str, evals: Mapping[str, Mapping[str, Any]], *,
             step: Optional[int] = None, data: Optional[Mapping[str, Any]] = None,
             out_dir: Optional[str] = None, progress: bool = True) -> Evaluation:
  """Runs `evals` ({name: evaluator config, as config.evals holds them}) on
  the model of `model_dir` through `evaluators.run_evals`, one evaluator
  at a time under a progress bar; its files go to `out_dir/evals/` (default
  a new temporary folder, never the model dir)."""
  if not evals:
    raise ValueError("evals is empty; give {name: dict(type=..., source=...)}")
  cfg, params, step = load_model(model_dir, step, data)
  for name, ev in evals.items():
    evaluators.resolve(ev)  # unknown types / fields fail before anything runs
    cfg.evals[name] = dict(ev)
  model = metalm.build_model(cfg.model)
  out_dir = out_dir or tempfile.mkdtemp(prefix="metalm_eval_")
  results, rows = {}, {}
  for name in _progress(sorted(evals), progress):
    flat = evaluators.run_evals(cfg, model, params, step, out_dir, names=[name])
    results[name] = {k.split("/", 1)[1]: v for k, v in flat.items()}
    got = evaluators.read_predictions(out_dir, name, step) or []
    rows[name] = sort_rows(got, evals[name]["type"])
  return Evaluation(model_dir, step, results, rows, cfg)


def metrics_table(res: Evaluation) -> List[Dict[str, Any]]:
  """[{evaluator, metric, value}] of one evaluation (rows for a DataFrame)."""
  return [dict(evaluator=n, metric=k, value=v)
          for n in sorted(res.results) for k, v in sorted(res.results[n].items())]


def compare(a: Evaluation, b: Evaluation) -> List[Dict[str, Any]]:
  """Side by side: [{evaluator, metric, a, b, diff (b - a)}] over the
  metrics both evaluations have."""
  out = []
  for name in sorted(set(a.results) & set(b.results)):
    for k in sorted(set(a.results[name]) & set(b.results[name])):
      va, vb = a.results[name][k], b.results[name][k]
      out.append(dict(evaluator=name, metric=k, a=va, b=vb, diff=vb - va))
  return out


def paired_rows(a: Evaluation, b: Evaluation, name: str) -> List[Dict[str, Any]]:
  """The examples of evaluator `name` in both, paired by record index:
  [{index, prompt, references, prediction_a, prediction_b, score_a, score_b}],
  largest drop (score_b - score_a) first."""
  rb = {r["index"]: r for r in b.rows.get(name, [])}
  out = []
  for r in a.rows.get(name, []):
    if r["index"] in rb and "score" in r:
      o = rb[r["index"]]
      out.append(dict(index=r["index"], prompt=r["prompt"], references=r["references"],
                      prediction_a=r["prediction"], prediction_b=o["prediction"],
                      score_a=r["score"], score_b=o["score"]))
  return sorted(out, key=lambda r: (r["score_b"] - r["score_a"], r["index"]))


def example_media(res: Evaluation, name: str, index: int) -> Dict[str, Any]:
  """{field: value} of the docked inputs (PNG bytes for images) of record
  `index` of evaluator `name`'s source and split, drawn as the evaluator drew them."""
  ev = evaluators.resolve(res.config.evals[name])
  records = pipeline.data_source(res.config.data, ev.source, ev.split)
  fields = sources.SOURCES.get(ev.source).extract(
      records[index], np.random.default_rng([int(ev.seed), index]))
  fmt: formats_lib.Format = evaluators.format_of(ev)
  parsed, _ = fmt.parse(fields)
  if parsed is None:
    return {}
  return {k: parsed.fields[k] for _, k in fmt.media()}


def default_evals(num_examples: int = 16) -> Dict[str, Dict[str, Any]]:
  """VQA, captioning and the loss on the embedded world's validation split."""
  return dict(
      vqa=dict(type="vqa", source="world_vqa", num_examples=num_examples),
      caption=dict(type="caption", source="world_caption", num_examples=num_examples,
                   meteor=False),
      loss=dict(type="loss", num_batches=2))


def model_label(model_dir: str) -> str:
  """A short name for a model dir (its base name)."""
  return os.path.basename(os.path.normpath(str(model_dir))) or str(model_dir)
