"""The measured tables of docs/performance.md and docs/aot-fit.md, rendered
from their result files (never typed by hand).

    python benchmarks/perf_tables.py           # rewrite the tables in their pages
    python benchmarks/perf_tables.py --check   # exit 1 if a table there differs

Each table sits between `<!-- NAME: benchmarks/perf_tables.py -->` and
`<!-- end of NAME -->` in its docs page; TABLES says which result files
(benchmarks/results/) it reads and which page holds it.
tests/test_perf_tables.py checks that the committed pages hold what this
script renders from the committed files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, NamedTuple, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import aot_rows  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS_DIR = os.path.join(ROOT, "docs")


def load(name: str) -> dict:
  with open(os.path.join(RESULTS, name)) as f:
    return json.load(f)


def _code(prov: dict) -> str:
  """The commit a result was measured at, as the provenance records it."""
  if not prov:
    return "not recorded"
  return f"{prov['commit'][:7]}{' + uncommitted changes' if prov.get('dirty') else ''}"


def _load_avg(prov: dict) -> str:
  if not prov:
    return "not recorded"
  return f"{prov['load_average_start'][0]:.1f} / {prov['load_average_end'][0]:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


# The CPU step's stages, oldest first: (label, train_step result, profile_step result).
STEP_STAGES = (
    ("before", "cpu_train_step_bench_71a42e6.json", "cpu_profile_step_71a42e6.json"),
    ("layer norm + GELU", "cpu_train_step_bench_90f08df.json", "cpu_profile_step_90f08df.json"),
    ("+ skip as lax.cond", "cpu_train_step_bench_37c070a.json", "cpu_profile_step_37c070a.json"),
    ("+ host_malloc=keep", "cpu_train_step_bench_fc994f3.json", "cpu_profile_step_fc994f3.json"),
    ("+ einsum attention", "cpu_train_step_bench.json", "cpu_profile_step.json"),
)


def train_step_table(*results_and_files) -> str:
  """`benchmarks/train_step.py --compare_torch` results, one row per stage
  (STEP_STAGES): ours vs torch."""
  *results, files = results_and_files
  rows = []
  for (label, _, _), r, f in zip(STEP_STAGES, results, files):
    prov = r.get("provenance", {})
    rows.append([
        label, _code(prov), f"{r['step_time_ms_median']:.1f} ({r['step_time_ms_min']:.1f})",
        f"{r['tokens_per_sec']:,.0f}",
        f"{100 * r['mfu']:.1f}% of {1000 * r['mfu_peak_tflops']:.1f}",
        f"{r['torch_step_time_ms_median']:.1f}", f"**{r['speedup_vs_torch']:.2f}x**",
        f"{r['cpu_time_ratio_torch_over_ours']:.2f}", f"{100 * r['torch_mfu_vs_best_peak']:.1f}%",
        f"{r['temp_mb']:.1f}", _load_avg(prov), f"`benchmarks/results/{f}`"])
  return _table(["", "code", "ours: step ms median (best)", "tokens/s", "MFU (of GFLOP/s)",
                 "torch: step ms median", "ours / torch speed", "CPU time torch / ours",
                 "torch MFU", "XLA temporaries (MB)", "load average start / end",
                 "result file"], rows)


def profile_table(*results_and_files) -> str:
  """`benchmarks/profile_step.py` results, one column pair per stage
  (STEP_STAGES): XLA thunk time per step by part, the timeline."""
  *results, files = results_and_files
  return _profile_columns([label for label, _, _ in STEP_STAGES], results, files)


# One-core profiles (`taskset -c 0`), oldest first: (label, profile_step result).
ONE_CORE_PROFILES = (("one core, malloc as the system's", "cpu_profile_step_1core_6f22414.json"),
                     ("one core, host_malloc=keep + einsum attention",
                      "cpu_profile_step_1core.json"))


def one_core_profile_table(*results_and_files) -> str:
  """The same for profile runs on one core (ONE_CORE_PROFILES)."""
  *results, files = results_and_files
  return _profile_columns([label for label, _ in ONE_CORE_PROFILES], results, files)


def _profile_columns(labels, results, files) -> str:
  parts = [p for p in results[0]["thunk_ms_per_step"]]
  rows = []
  for part in parts:
    row = [part]
    for r in results:
      t = r["thunk_ms_per_step"][part]
      row += [f"{t['total']:.1f} ({100 * t['share']:.1f}%)", f"{t['copy_transpose']:.1f}"]
    rows.append(row)

  def total(r, key):
    return sum(v[key] for v in r["thunk_ms_per_step"].values())

  rows.append(["all thunks"] + [f"{total(r, k):.1f}" for r in results
                                for k in ("total", "copy_transpose")])

  def line(r, key, fmt):
    t = r.get("timeline_ms_per_step")
    return fmt.format(t[key]) if t else "not recorded"

  rows.append(["traced step: no thunk running (async Eigen dots, waits)"] + [
      c for r in results for c in (line(r, "no_thunk_running", "{:.1f}"), "")])
  rows.append(["traced step: first to last thunk"] + [
      c for r in results for c in (line(r, "span", "{:.1f}"), "")])
  rows.append(["thunks per step (of them Eigen dots)"] + [
      line(r, key, "{:.0f}") for r in results
      for key in ("thunks_per_step", "eigen_dots_per_step")])
  rows.append(["whole step (wall, median)"] + [
      c for r in results for c in (f"{r['sub_step_ms_median']['whole train step']:.1f}", "")])
  head = ["part (ms per step, share)"]
  for label, r in zip(labels, results):
    head += [f"{label}: {_code(r.get('provenance'))}", "of it copies / transposes"]
  loads = ", ".join(f"`benchmarks/results/{f}` (load average {_load_avg(r.get('provenance'))})"
                    for r, f in zip(results, files))
  return _table(head, rows) + f"\n\nResult files: {loads}."


def matmul_table(result: dict, files: Sequence[str]) -> str:
  """`benchmarks/profile_step.py` results: the step's matmuls by phase and
  shape, with their rate over thunk time (YNNPACK) or marked async (Eigen)."""
  rows = []
  for r in result["matmuls"]:
    rate = f"{r['gflop_per_s']:.1f}" if r["gflop_per_s"] else "async (not measured)"
    rows.append([r["phase"], r["shape"], r["backend"], f"{r['per_step']:.0f}",
                 f"{r['thunk_ms']:.1f}", f"{r['gflop']:.2f}", rate])
  return _table(["phase", "shape ([batch x] M x K x N)", "kernel", "per step",
                 "thunk ms per step", "GFLOP per step", "GFLOP/s of thunk time"], rows) + (
      f"\n\nResult file: `benchmarks/results/{files[0]}` "
      f"({_code(result.get('provenance'))}, load average "
      f"{_load_avg(result.get('provenance'))}).")


def ab_table(*results_and_files) -> str:
  """`benchmarks/ab_step.py` results: this checkout's step against a ref
  commit's, interleaved in one run."""
  *results, files = results_and_files
  rows = []
  for r, f in zip(results, files):
    prov = r.get("provenance", {})
    label = f"{_code(prov)} vs {r['ref_commit'][:7]}"
    for side in ("ours", "ref"):
      if r.get(f"{side}_xla_flags"):
        label += f"; {side}: XLA_FLAGS `{r[f'{side}_xla_flags']}`"
      if r.get(f"{side}_flags"):
        label += f"; {side}: `{r[f'{side}_flags']}`"
    faults = (f"{r['ours_page_faults_per_step']:,.0f} / {r['ref_page_faults_per_step']:,.0f}"
              if "ours_page_faults_per_step" in r else "not recorded")
    rss = (f"{r['ours_peak_rss_mb']:,.0f} / {r['ref_peak_rss_mb']:,.0f}"
           if "ours_peak_rss_mb" in r else "not recorded")
    rows.append([label, r["batch"],
                 f"{r['ours_step_ms_median']:.1f} / {r['ref_step_ms_median']:.1f}",
                 f"**{r['ref_over_ours']:.3f}x**",
                 f"{r['block_ratio_mean']:.3f} +- {r['block_ratio_std']:.3f} "
                 f"({r['block_pairs']} pairs)",
                 f"{r['ours_temp_mb']:.1f} / {r['ref_temp_mb']:.1f}", faults, rss,
                 _load_avg(prov), f"`benchmarks/results/{f}`"])
  return _table(["ours vs ref", "batch", "step ms median, ours / ref", "speed, ours / ref",
                 "per block pair (mean +- std)", "XLA temporaries MB, ours / ref",
                 "minor page faults per step, ours / ref", "peak resident MB, ours / ref",
                 "load average start / end", "result file"], rows)


def matmul_floor_table(*args) -> str:
  """`benchmarks/matmul_floor.py` results, one row per file: the step's
  matmuls alone (in XLA and, where measured, in torch) next to the step, the
  torch reference and the step time the target asks."""
  *results, files = args
  rows = []
  for r, f in zip(results, files):
    prov = r.get("provenance", {})
    torch_floor = "torch_floor_ms_median" in r
    rows.append([
        _code(prov), r["batch"], str(r.get("cores", prov.get("cpu_count", ""))),
        f"{r['dots_per_step']} ({r['matmul_gflop_per_step']:.1f})",
        f"{r['floor_ms_median']:.1f} ({r['floor_gflop_per_s']:.0f} of "
        f"{r['matmul_peak_gflop_per_s']:.0f})",
        f"{r['step_ms_median']:.1f}", f"{r['torch_step_ms_median']:.1f}",
        f"{r['target_step_ms']:.1f}", f"**{100 * r['floor_share_of_target']:.0f}%**",
        f"{r['target_step_ms'] - r['floor_ms_median']:.1f}",
        (f"{r['torch_floor_ms_median']:.1f} ({r['torch_floor_gflop_per_s']:.0f})"
         if torch_floor else "not measured"),
        (f"{r['beyond_floor_ms']:.1f} / **{r['torch_beyond_torch_floor_ms']:.1f}**"
         if torch_floor else f"{r['step_ms_median'] - r['floor_ms_median']:.1f} / not measured"),
        _load_avg(prov), f"`benchmarks/results/{f}`"])
  target = results[-1]["target_speed_over_torch"]
  return _table(["code", "batch", "cores", "dots per step (GFLOP)",
                 "matmuls alone: ms median (GFLOP/s of the 1024^2 peak)", "our step ms",
                 "torch step ms", f"{target:g}x torch asks (ms)", "matmuls' share of that",
                 "left for all else (ms)", "the matmuls alone in torch: ms (GFLOP/s)",
                 "beyond each one's own matmuls: ours / torch (ms)",
                 "load average start / end", "result file"], rows)


def decode_table(before: dict, after: dict, files: Sequence[str]) -> str:
  """`benchmarks/decode.py` results: KV-cache generation per batch size,
  and the HF `generate` race where the file has one."""
  rows = []
  for label, r, f in zip(("before", "after"), (before, after), files):
    prov = r.get("provenance", {})
    for g in r["generation"]:
      rows.append([label, _code(prov), str(g["rows"]), f"{g['cached_tok_s']:,.0f}",
                   f"{g['no_cache_tok_s']:,.0f}", f"{g['speedup']:.1f}x", str(g["same_ids"]),
                   _load_avg(prov), f"`benchmarks/results/{f}`"])
  out = _table(["", "code", "rows", "tokens/s with the cache", "without", "cache speed-up",
                "same ids", "load average start / end", "result file"], rows)
  race = after.get("hf_race")
  if race:
    race_rows = [[str(b["rows"]), f"{b['ours_tok_s']:,.0f}", f"{b['hf_tok_s']:,.0f}",
                  f"**{b['ours_over_hf']:.2f}x**", f"{b['same_ids_frac']:.3f}"]
                 for b in race["batches"]]
    out += (f"\n\nHF `generate` race (torch {race['torch']}, transformers {race['transformers']}, "
            f"{race['torch_threads']} threads; `benchmarks/results/{files[1]}`):\n\n")
    out += _table(["rows", "ours tokens/s", "HF generate tokens/s", "ours / HF",
                   "same ids (fraction)"], race_rows)
  return out


def input_demand_table(result: dict, files: Sequence[str]) -> str:
  """`benchmarks/input_pipeline.py` results: what each fit-table row asks
  of a host, and the Grain workers that supply twice that at 40% MFU."""
  rows = []
  photos = sorted({d["photo_size"] for d in result["demand"] if d.get("photo_size")})
  for d in result["demand"]:
    row = [
        d["model"], d["target"], f"{d['hosts']} x {d['chips_per_host']}",
        str(d["rows_per_step"]), f"{1000 * d['step_at_peak_s']:.1f}",
        f"{d['demand_rows_per_s_at_peak']:,.0f}", f"{d['demand_rows_per_s_at_mfu']:,.0f}",
        f"{d['supply_wanted_rows_per_s']:,.0f}",
        f"{d['supply_rows_per_cpu_s']:.0f} (`{d['fed_by']}`)",
        f"{d['cores_needed']:.1f} ({d['workers_needed']})",
        f"{d['host_vcpus']} (`{d['host_machine']}`)", f"{100 * d['cores_share_of_host']:.1f}%"]
    if photos:
      row += ([f"{d['supply_rows_per_cpu_s_photos']:.0f}",
               f"{d['cores_needed_photos']:.1f} ({d['workers_needed_photos']})",
               f"{100 * d['cores_share_of_host_photos']:.1f}%"]
              if d.get("cores_needed_photos") else ["", "", ""])
    rows.append(row)
  mfu, room = 100 * result["mfu"], result["headroom"]
  extra = [f"{photos[0]} JPEGs: supply per core", "cores (= workers)", "share"] if photos else []
  return _table(["model", "target", "hosts x chips", "rows/step", "step at peak (ms)",
                 "demand per host at peak (rows/s)", f"at {mfu:.0f}% MFU", f"{room:g}x that",
                 "supply per core here (rows/s)", "cores (= workers) needed",
                 "host vCPUs (machine)", "share"] + extra, rows) + (
      f"\n\nResult file: `benchmarks/results/{files[0]}` (code {_code(result['provenance'])}, "
      f"load average {_load_avg(result['provenance'])}).")


def fit_table(*reports_then_files) -> str:
  """docs/aot-fit.md's fit table: one row per aot_rows.ROWS entry, from its
  committed compile report, then the commit each row was compiled at."""
  reports, files = reports_then_files[:-1], reports_then_files[-1]
  lines = [aot_rows.HEADER, aot_rows.SEPARATOR]
  lines += [aot_rows.table_row(model, r) for (model, *_), r in zip(aot_rows.ROWS, reports)]
  commits = sorted({_code(r.get("provenance", {})) for r in reports})
  return "\n".join(lines) + (
      f"\n\nCompiled at {', '.join(commits)}; reports in `benchmarks/results/`, one "
      f"aot_MODEL_TARGET.json per row ({len(files)} files, each with its provenance).")


def _gib(r: dict, key: str) -> float:
  return r[key] / 2 ** 30


def loss_chunk_table(*reports_then_files) -> str:
  """Memory per chip with full float32 logits and with the loss in chunks
  of positions, compiled from one tree: a (plain, chunked) pair of reports
  per entry of _CHUNK_PAIRS."""
  reports, files = reports_then_files[:-1], reports_then_files[-1]
  rows = []
  for (model, topology), plain, chunked, plain_file, chunked_file in zip(
      _CHUNK_PAIRS, reports[0::2], reports[1::2], files[0::2], files[1::2]):
    per_chip = plain["batch_size"] // plain["grad_accum_steps"] // plain["num_chips"]
    chunk = chunked["overrides"]["model.decoder.loss_chunk"]
    rows.append([
        model, topology, f"{per_chip} x {plain['seq_len']}",
        f"{_gib(plain, 'total_bytes'):.2f} ({_gib(plain, 'temp_bytes'):.2f})",
        f"chunks of {chunk}: {_gib(chunked, 'total_bytes'):.2f} "
        f"({_gib(chunked, 'temp_bytes'):.2f})",
        f"**{_gib(chunked, 'total_bytes') - _gib(plain, 'total_bytes'):+.2f}**",
        " / ".join(_code(r.get("provenance", {})) for r in (plain, chunked)),
        f"`{plain_file}`, `{chunked_file}`"])
  return _table(["model", "target", "rows x positions per chip (micro-batch)",
                 "full logits: GiB per chip (temporaries)", "chunked loss: GiB (temporaries)",
                 "change (GiB)", "code", "reports"], rows)


class Table(NamedTuple):
  files: Sequence[str]
  render: Callable[..., str]
  page: str = "performance.md"


_CHUNK_PAIRS = [("paper_vl", t) for t in ("v5e-16", "v4-16", "v5p-16", "h100x8")] + [
    ("modern_vl", t) for t in ("v5e-16", "h100x8")]


TABLES: Dict[str, Table] = {
    "train step table": Table(tuple(s[1] for s in STEP_STAGES), train_step_table),
    "step profile table": Table(tuple(s[2] for s in STEP_STAGES), profile_table),
    "matmul table": Table((STEP_STAGES[-1][2],), matmul_table),
    "one-core step profile table": Table(tuple(f for _, f in ONE_CORE_PROFILES),
                                         one_core_profile_table),
    "ab table": Table(("cpu_ab_skip_cond.json", "cpu_ab_host_malloc.json",
                       "cpu_ab_einsum_attention.json"), ab_table),
    "matmul floor table": Table(("cpu_matmul_floor_952d72e.json", "cpu_matmul_floor_f663539.json",
                                 "cpu_matmul_floor_1core_b6b7c08.json", "cpu_matmul_floor.json",
                                 "cpu_matmul_floor_1core.json"), matmul_floor_table),
    "decode table": Table(("cpu_decode_bench_71a42e6.json", "cpu_decode_bench.json"),
                          decode_table),
    "input demand table": Table(("cpu_input_pipeline.json",), input_demand_table),
    "fit table": Table(tuple(aot_rows.report_name(m, t) for m, _, t, _ in aot_rows.ROWS),
                       fit_table, "aot-fit.md"),
    "loss chunk table": Table(
        tuple(f for m, t in _CHUNK_PAIRS for f in (f"aot_{m}_{t}_full_logits.json",
                                                   aot_rows.report_name(m, t))),
        loss_chunk_table, "aot-fit.md"),
}


def render(name: str) -> str:
  table = TABLES[name]
  return table.render(*[load(f) for f in table.files], table.files)


def markers(name: str):
  return f"<!-- {name}: benchmarks/perf_tables.py -->", f"<!-- end of {name} -->"


def page_path(name: str) -> str:
  return os.path.join(DOCS_DIR, TABLES[name].page)


def rewrite(text: str, names: List[str], page: str = "") -> str:
  for name in names:
    begin, end = markers(name)
    if begin not in text or end not in text:
      raise ValueError(f"{page or 'the page'}: no markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = f"{head}{begin}\n{render(name)}\n{end}{tail}"
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--check", action="store_true", help="exit 1 if docs differ from the results")
  args = p.parse_args(argv)
  pages: Dict[str, List[str]] = {}
  for name in TABLES:
    pages.setdefault(page_path(name), []).append(name)
  stale, written = [], 0
  for path, names in pages.items():
    with open(path) as f:
      text = f.read()
    new = rewrite(text, names, path)
    if new == text:
      continue
    if args.check:
      stale.append(path)
    else:
      with open(path, "w") as f:
        f.write(new)
      print(f"wrote {len(names)} tables into {path}")
      written += 1
  if stale:
    print(f"{', '.join(stale)}: tables differ from their result files; run "
          "python benchmarks/perf_tables.py", file=sys.stderr)
    return 1
  if not written:
    print("tables match their result files")
  return 0


if __name__ == "__main__":
  sys.exit(main())
