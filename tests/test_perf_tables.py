"""docs/performance.md's before / after tables are what benchmarks/perf_tables.py
renders from the committed result files. Pure Python: no jax."""
import json

import pytest

from benchmarks import perf_tables


def test_committed_docs_hold_the_tables_of_the_committed_results():
  with open(perf_tables.DOCS) as f:
    text = f.read()
  for name in perf_tables.TABLES:
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
