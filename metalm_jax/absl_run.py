"""absl.app.run for scripts, except that asking for help is a success.

absl prints the usage for --help and then exits with status 1; a script run
with --help (or -h, --helpshort, --helpfull) here prints the same usage (the
main module's docstring and its flags) and exits 0, without parsing the other
flags (so required flags need not be given) and without running main.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from absl import app

SHORT_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
FULL_HELP = ("--helpfull", "-helpfull")


def help_requested(argv: Sequence[str]) -> Optional[str]:
  """"short" or "full" when argv[1:] (up to a bare "--") asks for help, else None."""
  for a in argv[1:]:
    if a == "--":
      break
    if a in FULL_HELP:
      return "full"
    if a in SHORT_HELP:
      return "short"
  return None


def run(main: Callable, argv: Optional[Sequence[str]] = None, **kwargs) -> None:
  """app.run(main, **kwargs), or the usage and exit 0 when help is asked for."""
  wanted = help_requested(sys.argv if argv is None else argv)
  if wanted:
    app.usage(shorthelp=wanted == "short", writeto_stdout=True, exitcode=0)
  app.run(main, argv=argv, **kwargs)
