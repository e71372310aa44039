"""docs/performance.md's before / after tables are what benchmarks/perf_tables.py
renders from the committed result files. Pure Python: no jax."""
import json

import pytest

from benchmarks import perf_tables


def test_committed_docs_hold_the_tables_of_the_committed_results():
  for name in perf_tables.TABLES:
    with open(perf_tables.page_path(name)) as f:
      text = f.read()
    begin, end = perf_tables.markers(name)
    assert f"{begin}\n{perf_tables.render(name)}\n{end}" in text, (
        f"{name}: run python benchmarks/perf_tables.py")
  assert perf_tables.main(["--check"]) == 0


def test_rendered_figures_come_from_the_file(tmp_path, monkeypatch):
  """A changed result file changes the table; a page without markers is refused."""
  before = perf_tables.load("cpu_train_step_bench_71a42e6.json")
  after = dict(perf_tables.load("cpu_train_step_bench.json"), speedup_vs_torch=1.234,
               step_time_ms_median=321.0, mfu=0.5)
  for name, data in (("b.json", before), ("a.json", after)):
    (tmp_path / name).write_text(json.dumps(data))
  monkeypatch.setattr(perf_tables, "RESULTS", str(tmp_path))
  monkeypatch.setitem(perf_tables.TABLES, "train step table",
                      perf_tables.Table(("b.json", "a.json"), perf_tables.train_step_table))
  table = perf_tables.render("train step table")
  assert "**1.23x**" in table and "| 321.0 (" in table and "| 50.0% of " in table
  assert f"**{before['speedup_vs_torch']:.2f}x**" in table
  assert "`benchmarks/results/a.json`" in table
  with pytest.raises(ValueError, match="no markers"):
    perf_tables.rewrite("no tables here", ["train step table"])


def test_fit_and_loss_chunk_tables_read_their_reports(tmp_path, monkeypatch):
  """The fit table has one row per aot_rows.ROWS entry, from its report; the
  loss-chunk table's change column is chunked minus full, from the pair."""
  from benchmarks import aot_rows
  tables = perf_tables.TABLES
  for name in tables["fit table"].files + tables["loss chunk table"].files:
    (tmp_path / name).write_text(json.dumps(perf_tables.load(name)))
  model, _, topo, _ = aot_rows.ROWS[0]
  report = perf_tables.load(aot_rows.report_name(model, topo))
  report.update(total_bytes=3 * 2 ** 30, temp_bytes=2 * 2 ** 30, fits=True)
  (tmp_path / aot_rows.report_name(model, topo)).write_text(json.dumps(report))
  plain = perf_tables.load(f"aot_{model}_{topo}_full_logits.json")
  plain.update(total_bytes=5 * 2 ** 30)
  (tmp_path / f"aot_{model}_{topo}_full_logits.json").write_text(json.dumps(plain))
  monkeypatch.setattr(perf_tables, "RESULTS", str(tmp_path))
  fit = perf_tables.render("fit table").splitlines()
  assert len([ln for ln in fit if ln.startswith(f"| {model} |")]) == sum(
      row[0] == model for row in aot_rows.ROWS)
  assert fit[2].startswith(f"| {model} | {topo} (") and "| 3.00 GiB |" in fit[2]
  assert len([ln for ln in fit if ln.startswith("| ") and " GiB |" in ln]) == len(aot_rows.ROWS)
  chunk = perf_tables.render("loss chunk table").splitlines()
  assert chunk[2].startswith(f"| {model} | {topo} | ")
  assert "| 5.00 (" in chunk[2] and ": 3.00 (2.00) |" in chunk[2] and "| **-2.00** |" in chunk[2]


def test_input_demand_table_adds_photo_columns_only_when_measured():
  result = perf_tables.load("cpu_input_pipeline.json")
  plain = dict(result, demand=[{k: v for k, v in d.items() if "photo" not in k}
                               for d in result["demand"]])
  files = ("cpu_input_pipeline.json",)
  head = perf_tables.input_demand_table(plain, files).splitlines()[0]
  assert "JPEGs" not in head and head.count("|") == 13
  first = dict(plain["demand"][0], photo_size="640x480", supply_rows_per_cpu_s_photos=123.4,
               cores_needed_photos=7.25, workers_needed_photos=8,
               cores_share_of_host_photos=0.0647)
  last = plain["demand"][-1]
  lines = perf_tables.input_demand_table(dict(plain, demand=[first, last]), files).splitlines()
  assert "| 640x480 JPEGs: supply per core | cores (= workers) | share |" in lines[0]
  assert lines[2].endswith("| 123 | 7.2 (8) | 6.5% |")
  assert lines[3].endswith("|  |  |  |")  # a row without photos (not a vl model) stays empty
