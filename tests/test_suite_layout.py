"""The test suite's own layout (docs/development.md#markers and
#test-layout-and-warnings): every
tests/test_*.py holds tests and every shared helper lives in a helper module
(a tests/*.py not named test_*), no test file imports another test module or
an underscore name from anywhere in tests/, pytest.ini registers exactly the
markers the suite uses under --strict-markers and filters warnings narrowly,
the known integration modules carry the `integration` marker, and
launch/test.sh prints the slowest tests."""
from __future__ import annotations

import ast
import configparser
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
MARKERS = {"slow", "integration"}
# pytest's own marks (no registration needed).
BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
# Integration (docs/development.md#markers): a test that runs a job end to
# end: one of our programs in a subprocess (`python -m metalm_jax.main`, a
# CLI, the notebook, launch/aot.sh), training steps through trainer.train,
# several processes, or the GCS emulator. Dry runs and --help of the launch
# scripts and fresh-interpreter import checks are unit tests.
# Modules whose every test is one (module-level `pytestmark`):
INTEGRATION_MODULES = [
    "test_evaluate_multiprocess", "test_export_trainer", "test_gcs_outage",
    "test_hf_decoder_training", "test_main_multiprocess", "test_main_resume",
    "test_main_your_data", "test_notebook", "test_serve", "test_serve_audio",
    "test_serve_continuous", "test_serve_limits", "test_train_exit_paths",
]
# Single tests (`@pytest.mark.integration`), module -> test functions: the
# long ones (a unit run without them stays short).
INTEGRATION_TESTS = {
    "test_aot": ["test_tiny_fits_on_v5e_2x2_and_oversized_does_not"],
    "test_claims": ["test_quick_run_on_the_test_world"],
    "test_data_pipeline": ["test_concurrent_first_use_prepares_once",
                           "test_resume_with_worker_processes_through_orbax"],
    "test_data_pipeline_av": ["test_four_modality_training_steps"],
    "test_finetune": ["test_frozen_decoder_nli_finetune_with_evaluator"],
    "test_main_config": ["test_flag_errors_name_the_field",
                         "test_gcs_data_dir_stops_at_start_up_naming_the_ways"],
    "test_main_manual_dirs": ["test_manual_dirs_override_through_main"],
    "test_predictor": ["test_predictor_on_raw_images_without_training_stack"],
    "test_sweep": ["test_sweep_of_the_real_main"],
    "test_train_divergence": ["test_huge_lr_from_scratch_then_a_sane_restart_trains",
                              "test_good_run_pushed_to_huge_lr_keeps_its_last_good_step"],
    "test_train_loop": ["test_meshes_agree_and_checkpoint_moves_across_meshes"],
    "test_train_nonfinite": ["test_trainer_skips_counts_and_stops_with_finite_checkpoints"],
}
# A test that takes one of these fixtures, or runs `python -m metalm_jax.main`
# through tests/main_helpers.py, is an integration test (checked for every test).
INTEGRATION_FIXTURES = {"gcs_bucket", "gcs_emulator"}
INTEGRATION_CALLS = re.compile(r"\bH\.(start|run|run_module)\(")


def _modules():
  return sorted(p for p in TESTS.glob("*.py"))


def _test_modules():
  return [p for p in _modules() if p.name.startswith("test_")]


def _tree(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _defines_tests(tree: ast.Module) -> bool:
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
      return True
    if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
      return True
  return False


def _tests_imports(tree: ast.Module):
  """(module, names, alias) for every import of a tests.* module, at any depth:
  names are the imported attributes of `from tests.x import a, b`."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("tests."):
          yield a.name, (), a.asname
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "tests":
        for a in node.names:
          yield f"tests.{a.name}", (), a.asname or a.name
      elif node.module.startswith("tests."):
        yield node.module, tuple(a.name for a in node.names), None


def _is_private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("path", _test_modules(), ids=lambda p: p.name)
def test_every_test_module_defines_a_test(path):
  assert _defines_tests(_tree(path)), (
      f"tests/{path.name} defines no test: a helper module gets a name without the "
      "test_ prefix (e.g. tests/<topic>_fixtures.py)")


def test_no_module_imports_a_test_module_or_a_private_name():
  """Helpers are shared through helper modules under public names: importing a
  test module would couple two test files (and run its module-level code)."""
  bad = []
  for path in _modules():
    tree = _tree(path)
    aliases = {}
    for module, names, alias in _tests_imports(tree):
      leaf = module.rsplit(".", 1)[-1]
      if leaf.startswith("test_") or leaf == "conftest":
        bad.append(f"{path.name} imports {module}")
      bad += [f"{path.name} imports {module}.{n}" for n in names if _is_private(n)]
      if alias:
        aliases[alias] = module
    for node in ast.walk(tree):  # H._private on an imported tests module
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and _is_private(node.attr)):
        bad.append(f"{path.name} uses {aliases[node.value.id]}.{node.attr}")
  assert not bad, "\n".join(bad)


def test_the_checks_catch_a_test_module_import_and_a_helper_named_test(tmp_path):
  planted = ast.parse("from tests.test_layers import _ln\nimport tests.test_x as X\n"
                      "from tests import main_helpers as H\nH._private\n")
  found = list(_tests_imports(planted))
  assert found == [("tests.test_layers", ("_ln",), None), ("tests.test_x", (), "X"),
                   ("tests.main_helpers", (), "H")]
  assert not _defines_tests(ast.parse("import pytest\n\ndef helper():\n  pass\n"))
  assert _defines_tests(ast.parse("class TestX:\n  pass\n"))


def _ini():
  ini = configparser.ConfigParser(interpolation=None)
  ini.read(ROOT / "pytest.ini")
  return ini["pytest"]


def test_markers_are_registered_and_strict():
  ini = _ini()
  assert "--strict-markers" in ini["addopts"].split()
  registered = {line.split(":")[0].strip() for line in ini["markers"].strip().splitlines()}
  assert registered == MARKERS
  used = set()
  for path in _modules():
    used |= set(re.findall(r"pytest\.mark\.(\w+)", path.read_text(encoding="utf-8")))
  assert used - BUILTIN_MARKS <= MARKERS, used - BUILTIN_MARKS - MARKERS


def test_warnings_are_filtered_narrowly():
  """No blanket ignore: each ignored warning names its message or its module,
  and none is one of metalm_jax's own."""
  lines = [l.strip() for l in _ini()["filterwarnings"].strip().splitlines() if l.strip()]
  for line in lines:
    action, message, category, module = (line.split(":", 4) + [""] * 4)[:4]
    if action != "ignore":
      continue
    assert message or module, f"blanket filter: {line}"
    assert not module.startswith("metalm_jax"), f"hides our own warnings: {line}"


def _marks(decorators) -> set[str]:
  return {m for d in decorators for m in re.findall(r"pytest\.mark\.(\w+)", ast.unparse(d))}


def _module_marks(tree: ast.Module) -> set[str]:
  marks = set()
  for node in tree.body:
    if (isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)):
      marks |= _marks([node.value])
  return marks


def _test_functions(tree: ast.Module):
  return {n.name: n for n in tree.body
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")}


@pytest.mark.parametrize("name", INTEGRATION_MODULES)
def test_known_integration_modules_carry_the_marker(name):
  path = TESTS / f"{name}.py"
  assert path.exists(), f"tests/{name}.py is gone: update INTEGRATION_MODULES"
  assert "integration" in _module_marks(_tree(path)), (
      f"tests/{name}.py: add `pytestmark = pytest.mark.integration`")


@pytest.mark.parametrize("name", sorted(INTEGRATION_TESTS))
def test_known_integration_tests_carry_the_marker(name):
  tree = _tree(TESTS / f"{name}.py")
  functions = _test_functions(tree)
  module = _module_marks(tree)
  for fn in INTEGRATION_TESTS[name]:
    assert fn in functions, f"tests/{name}.py::{fn} is gone: update INTEGRATION_TESTS"
    assert "integration" in module | _marks(functions[fn].decorator_list), (
        f"tests/{name}.py::{fn}: add @pytest.mark.integration")


def test_emulator_and_main_subprocess_tests_carry_the_marker():
  bad = []
  for path in _test_modules():
    tree = _tree(path)
    if "integration" in _module_marks(tree):
      continue
    src = path.read_text(encoding="utf-8")
    for name, fn in _test_functions(tree).items():
      args = {a.arg for a in fn.args.args}
      if ((args & INTEGRATION_FIXTURES or INTEGRATION_CALLS.search(ast.get_source_segment(src, fn)))
          and "integration" not in _marks(fn.decorator_list)):
        bad.append(f"{path.name}::{name}")
  assert not bad, "add @pytest.mark.integration to:\n" + "\n".join(bad)


def test_test_sh_prints_durations_and_answers_help():
  script = (ROOT / "launch" / "test.sh").read_text(encoding="utf-8")
  pytest_line = [l for l in script.splitlines() if "-m pytest" in l]
  assert len(pytest_line) == 1 and "--durations=15" in pytest_line[0], pytest_line
  assert '-m "not slow"' in pytest_line[0]
  p = subprocess.run(["bash", str(ROOT / "launch" / "test.sh"), "--help"], capture_output=True,
                     text=True, timeout=30, cwd=ROOT)
  assert p.returncode == 0 and "launch/test.sh" in p.stdout, p.stderr
  assert "--durations=15" in p.stdout and "integration" in p.stdout
