"""The documentation's links and paths point at things that exist.

README.md is the front door (at most 250 lines, both commands); docs/*.md hold
one topic each. Every relative link in them must resolve to a file of the
repository (and its #anchor to a heading of that file), and every repository
path named in backticks (`metalm_jax/...`, `configs/...`, ...) must exist, so a
moved or renamed file shows up here instead of in a reader's 404.

Pure Python: no jax, no fixtures.
"""
from __future__ import annotations

import glob
import pathlib
import re
import sys
from typing import Iterator, List, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250
COMMANDS = ("bash launch/local.sh", "bash launch/test.sh")
PATH_PREFIXES = ("metalm_jax/", "configs/", "launch/", "benchmarks/", "tests/", "docs/",
                 "notebooks/")

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files() -> List[pathlib.Path]:
  return [README] + sorted((ROOT / "docs").glob("*.md"))


def prose(text: str) -> str:
  """The text outside fenced code blocks (links there are not links)."""
  out, fenced = [], False
  for line in text.split("\n"):
    if _FENCE.match(line):
      fenced = not fenced
      out.append("")
      continue
    out.append("" if fenced else line)
  return "\n".join(out)


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: markup dropped, lower case, spaces -> '-',
  punctuation other than '-' and '_' removed."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
  text = text.replace("`", "").replace("*", "")
  text = text.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  seen, out = {}, set()
  for line in prose(path.read_text(encoding="utf-8")).split("\n"):
    m = _HEADING.match(line)
    if not m:
      continue
    base = slug(m.group(2))
    n = seen.get(base, 0)
    seen[base] = n + 1
    out.add(base if n == 0 else f"{base}-{n}")
  return out


def links(path: pathlib.Path) -> Iterator[str]:
  text = prose(path.read_text(encoding="utf-8"))
  text = _CODE.sub("", text)  # `[x](y)` inside inline code is not a link
  for m in _LINK.finditer(text):
    yield m.group(1)


def link_problems(path: pathlib.Path) -> List[str]:
  problems = []
  for target in links(path):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = path if not file_part else (path.parent / file_part).resolve()
    rel = path.relative_to(ROOT)
    if not dest.exists():
      problems.append(f"{rel}: link {target!r}: {file_part} does not exist")
      continue
    try:
      dest.relative_to(ROOT)
    except ValueError:
      problems.append(f"{rel}: link {target!r} leaves the repository")
      continue
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      problems.append(f"{rel}: link {target!r}: no heading #{anchor} in "
                      f"{dest.relative_to(ROOT)}")
  return problems


def expand_braces(path: str) -> List[str]:
  m = re.search(r"\{([^{}]*)\}", path)
  if not m:
    return [path]
  out = []
  for alt in m.group(1).split(","):
    out.extend(expand_braces(path[:m.start()] + alt + path[m.end():]))
  return out


def code_paths(path: pathlib.Path) -> Iterator[Tuple[str, str]]:
  """(span, path) for each inline code span that names a repository path: its
  first word starts with one of PATH_PREFIXES. A config argument after ':'
  (`configs/pretrain_vl.py:size=tiny`) and trailing punctuation are dropped."""
  text = prose(path.read_text(encoding="utf-8"))
  for m in _CODE.finditer(text):
    span = m.group(2).strip()
    if not span.startswith(PATH_PREFIXES):
      continue
    word = span.split()[0]
    word = word.split(":", 1)[0].rstrip(".,;)")
    yield span, word


def path_problems(path: pathlib.Path) -> List[str]:
  problems = []
  for span, word in code_paths(path):
    for candidate in expand_braces(word):
      if any(c in candidate for c in "*?["):
        found = glob.glob(str(ROOT / candidate))
      else:
        found = (ROOT / candidate).exists()
      if not found:
        problems.append(f"{path.relative_to(ROOT)}: `{span}` names {candidate}, "
                        "which does not exist")
  return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
  assert not link_problems(doc), "\n".join(link_problems(doc))


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_backticked_repo_paths_exist(doc):
  assert not path_problems(doc), "\n".join(path_problems(doc))


def test_readme_is_a_front_door():
  text = README.read_text(encoding="utf-8")
  lines = text.count("\n") + (0 if text.endswith("\n") else 1)
  assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"
  for command in COMMANDS:
    assert command in text, f"README.md does not show `{command}`"


def test_readme_links_every_docs_page():
  linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
  missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
  assert not missing, f"docs pages not linked from README.md: {missing}"


def test_checker_catches_breakage(tmp_path, monkeypatch):
  """The checks can fail: a broken link, a bad anchor and a missing path are
  reported (so a green run means something)."""
  docs = tmp_path / "docs"
  docs.mkdir()
  (tmp_path / "metalm_jax").mkdir()
  (tmp_path / "metalm_jax" / "here.py").write_text("")
  (docs / "a.md").write_text("# Title\n\n## Sub part\n\n[ok](#sub-part) "
                             "[ok](../metalm_jax/here.py)\n"
                             "[broken](missing.md) [bad anchor](a.md#nowhere)\n"
                             "`metalm_jax/here.py` `metalm_jax/gone.py` "
                             "`metalm_jax/{here,gone2}.py`\n"
                             "```\n[in code](not_checked.md)\n```\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
  lp = link_problems(docs / "a.md")
  pp = path_problems(docs / "a.md")
  assert len(lp) == 2 and "missing.md" in lp[0] and "#nowhere" in lp[1], lp
  assert len(pp) == 2 and "gone.py" in pp[0] and "gone2.py" in pp[1], pp
