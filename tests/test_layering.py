"""The house's layering: the library never imports the user's experiment files
(configs/), and loading a tokenizer never builds data sets."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metalm_jax"

# Imports every metalm_jax module with `configs` blocked by a meta-path finder
# that records each attempt; prints the attempts and the modules that failed.
_IMPORT_ALL = r"""
import importlib, importlib.abc, pkgutil, sys, traceback

attempts = []

class BlockConfigs(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "configs" or name.startswith("configs."):
      attempts.append(name)
      raise ImportError(f"the library imported the user's {name!r}")
    return None

sys.meta_path.insert(0, BlockConfigs())
import metalm_jax
from absl import flags
failed, n, walked = [], 0, 0
for info in pkgutil.walk_packages(metalm_jax.__path__, "metalm_jax."):
  if info.name.rsplit(".", 1)[-1] == "__main__":
    continue  # running an entry point is not importing it
  walked += 1
  before = set(flags.FLAGS)
  try:
    importlib.import_module(info.name)
    n += 1
  except Exception:
    failed.append((info.name, traceback.format_exc(limit=3)))
  for name in set(flags.FLAGS) - before:  # entry points (main, aot) define the same flags
    delattr(flags.FLAGS, name)
print("WALKED", walked)
print("IMPORTED", n)
print("ATTEMPTS", sorted(set(attempts)))
print("CONFIGS_LOADED", sorted(m for m in sys.modules
                               if m == "configs" or m.startswith("configs.")))
print("FAILED", failed)
"""


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = str(ROOT)  # this checkout's metalm_jax (configs/ is blocked, not absent)
  return env


def test_no_library_module_imports_configs():
  out = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True,
                       cwd=str(ROOT), env=_env(), timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  keys = ("WALKED", "IMPORTED", "ATTEMPTS", "CONFIGS_LOADED", "FAILED")
  lines = dict(line.split(" ", 1) for line in out.stdout.splitlines()
               if line.split(" ", 1)[0] in keys)
  assert int(lines["WALKED"]) >= 70, out.stdout  # the walk really covered the package
  assert lines["IMPORTED"] == lines["WALKED"], out.stdout
  assert lines["ATTEMPTS"] == "[]", out.stdout
  assert lines["CONFIGS_LOADED"] == "[]", out.stdout
  assert lines["FAILED"] == "[]", out.stdout


def _configs_imports(path: pathlib.Path):
  """Names of `configs` imports anywhere in a file (function-level ones too)."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module or ""]
    else:
      continue
    yield from (n for n in names if n == "configs" or n.startswith("configs."))


def test_every_library_folder_is_a_package_setup_installs():
  """find_packages (setup.py) skips a folder without __init__.py: a pip install
  would then lack its modules, and the import walk above would miss them."""
  import setuptools
  seen = {}
  cwd = os.getcwd()
  try:  # setup.py's own `packages=` (it calls setup() at import; capture the arguments)
    os.chdir(ROOT)
    with pytest.MonkeyPatch.context() as m:
      m.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
      exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "setup"})
  finally:
    os.chdir(cwd)
  installed = set(seen["packages"])
  folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("*.py")}
  assert folders - installed == set()
  assert {p for p in installed if p.split(".")[0] != "metalm_jax"} == set()  # no `configs`


def test_no_library_source_names_configs_in_an_import():
  """Also the lazy imports inside functions, which importing a module does not run."""
  bad = {str(p.relative_to(ROOT)): list(_configs_imports(p)) for p in PACKAGE.rglob("*.py")}
  assert {k: v for k, v in bad.items() if v} == {}
  assert len(bad) >= 70


def test_checker_sees_a_lazy_configs_import(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("def f():\n  from configs import common\n  import configs.data as d\n")
  assert list(_configs_imports(probe)) == ["configs", "configs.data"]


_LOAD_TOKENIZER = r"""
import sys
from metalm_jax.data import tokenizer as tok_lib
path = sys.argv[1]
tok_lib.train_tokenizer(["a red circle left of a blue square", "two green cubes"] * 50, 40, path)
tok = tok_lib.Tokenizer.from_file(path)
assert tok.decode(tok.encode("a red circle")) == "a red circle"
heavy = sorted(m for m in sys.modules if m in ("metalm_jax.data.prepare", "tensorflow_datasets",
                                               "metalm_jax.data.builders", "grain"))
print("HEAVY", heavy)
"""


def test_loading_a_tokenizer_builds_no_data_set(tmp_path):
  """tokenizer.py does not import prepare.py (no cycle): reading a tokenizer
  file neither builds the embedded world nor imports the data set machinery."""
  data_dir = tmp_path / "data"
  env = {**_env(), "METALM_DATA_DIR": str(data_dir)}
  out = subprocess.run([sys.executable, "-c", _LOAD_TOKENIZER, str(tmp_path / "t.model")],
                       capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "HEAVY []" in out.stdout, out.stdout
  assert not data_dir.exists()
  source = (PACKAGE / "data" / "tokenizer.py").read_text()
  assert "prepare" not in {n for node in ast.walk(ast.parse(source))
                           if isinstance(node, ast.ImportFrom) for n in
                           [a.name for a in node.names]}


def _package_edges(root: pathlib.Path):
  """{(a, b): "file:line"} for every import of package / top-level module b of
  metalm_jax from a module of a (a != b), imports inside functions included."""
  edges = {}
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root)
    a = rel.parts[0].removesuffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        mods = [x.name for x in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        mods = [node.module] + [f"{node.module}.{x.name}" for x in node.names]
      else:
        continue
      for m in mods:
        parts = m.split(".")
        if parts[0] == root.name and len(parts) > 1 and parts[1] != a and (
            (root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()):
          edges.setdefault((a, parts[1]), f"{rel}:{node.lineno}")
  return edges


def _cycles(edges):
  """Pairs of units that reach each other (each cycle shows up as such a pair)."""
  reach = {}
  for a, b in edges:
    reach.setdefault(a, set()).add(b)
  changed = True
  while changed:  # transitive closure
    changed = False
    for a in list(reach):
      new = set().union(*(reach.get(b, set()) for b in reach[a])) - reach[a]
      if new:
        reach[a] |= new
        changed = True
  return sorted((a, b) for a in reach for b in reach[a] if a < b and a in reach.get(b, ()))


def test_no_import_cycle_between_library_packages():
  """Packages form layers: no package (or top-level module) of metalm_jax
  reaches itself through imports, function-level ones included."""
  edges = _package_edges(PACKAGE)
  assert ("train", "evaluate") in edges and ("evaluate", "sharding") in edges  # it sees them
  assert _cycles(edges) == [], {k: v for k, v in edges.items()
                                if (k[1], k[0]) in edges or k in _cycles(edges)}


def test_cycle_checker_finds_a_planted_cycle(tmp_path):
  pkg = tmp_path / "metalm_jax"
  for unit, body in (("data", "from metalm_jax import presets\n"),
                     ("evaluate", "def f():\n  from metalm_jax.train import steps\n"),
                     ("train", "from metalm_jax.evaluate import x\n")):
    (pkg / unit).mkdir(parents=True)
    (pkg / unit / "__init__.py").write_text(body)
  (pkg / "presets.py").write_text("from metalm_jax.data import images\n")
  assert _cycles(_package_edges(pkg)) == [("data", "presets"), ("evaluate", "train")]


# The library's layers, lowest first: a package (or top-level module) may
# import only from lower layers (utilities in layer 0 may import each other).
LAYERS = (
    ("registry", "optional", "storage", "config_names", "provenance", "aot_targets",
     "absl_run", "host_memory"),
    ("media",),                          # decoders of images, audio, video
    ("presets",),                        # model and data presets
    ("models",),                         # modules, modality records, batch shapes
    ("batch",),                          # the batch contract
    ("data", "params_io", "sharding"),   # pipeline; params files; mesh and rules
    ("run_files",),                      # the workdir's files
    ("evaluate",),
    ("train",),
    ("convert", "sweep"),                # serving, HF import/export; sweeps
    ("checkpoint_eval",),                # the evaluators on a workdir / export dir
    ("aot", "export", "main", "serve", "demo"),  # entry points (serve: the HTTP server)
)


def _layer_violations(edges, layers):
  index = {u: i for i, layer in enumerate(layers) for u in layer}
  units = {u for edge in edges for u in edge}
  unplaced = sorted(units - set(index))
  upward = sorted(f"{a} -> {b} ({where})" for (a, b), where in edges.items()
                  if a in index and b in index and index[b] >= index[a] and index[a] > 0)
  return unplaced, upward


def test_packages_import_only_lower_layers():
  unplaced, upward = _layer_violations(_package_edges(PACKAGE), LAYERS)
  assert unplaced == [], f"place these in LAYERS: {unplaced}"
  assert upward == []


def test_layer_checker_finds_an_upward_import(tmp_path):
  pkg = tmp_path / "metalm_jax"
  (pkg / "models").mkdir(parents=True)
  (pkg / "models" / "__init__.py").write_text("def f():\n  from metalm_jax.data import x\n")
  (pkg / "data").mkdir()
  (pkg / "data" / "__init__.py").write_text("from metalm_jax import models\n")
  (pkg / "fresh.py").write_text("from metalm_jax import models\n")
  unplaced, upward = _layer_violations(_package_edges(pkg), LAYERS)
  assert unplaced == ["fresh"]
  assert upward == ["models -> data (models/__init__.py:2)"]
