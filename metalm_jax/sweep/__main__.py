"""Command line of the sweep tool (see metalm_jax/sweep/__init__.py)."""
from __future__ import annotations

import shlex
import sys
from typing import List, Optional, Sequence

from metalm_jax import absl_run
from absl import app, flags

from metalm_jax import storage
from metalm_jax.sweep import grid as grid_lib
from metalm_jax.sweep import report as report_lib
from metalm_jax.sweep import runner as runner_lib
from metalm_jax.sweep import state as state_lib

flags.DEFINE_string("config", None, "config file[:arg], as for metalm_jax.main")
flags.DEFINE_string("grid", "", "axes 'FIELD=V1,V2;FIELD=V1,V2' (';' between axes)")
flags.DEFINE_string("root", None, "sweep directory (local or gs://): sweep.json, one workdir "
                    "per run, report.*")
flags.DEFINE_multi_string("set", [], "fixed override FIELD=VALUE for every run (repeatable; "
                          "trailing --config.FIELD=VALUE args do the same)")
flags.DEFINE_bool("print_commands", False, "print one shell command per run, run nothing "
                  "(sweep.json is written, so --report works once they ran)")
flags.DEFINE_string("launcher", None, "with --print_commands: a launcher prefix, e.g. 'bash "
                    "launch/tpu_pod.sh --name=N --zone=Z --accelerator=A'; each command is "
                    "PREFIX --config=.. --workdir=.. -- OVERRIDES")
flags.DEFINE_bool("report", False, "only write DIR/report.{md,json,png} from the runs' workdirs")
flags.DEFINE_list("metrics", [], "report columns, e.g. loss,eval_loss,vqa/accuracy "
                  "(default: loss, accuracy, eval_loss, eval_accuracy and evaluator metrics)")
flags.DEFINE_bool("force", False, "replace a DIR/sweep.json that holds another grid/config")
flags.mark_flag_as_required("root")
FLAGS = flags.FLAGS

_OVERRIDE = "--config."


def split_overrides(argv: Sequence[str]):
  """(argv without the trailing --config.F=V args, those overrides as 'F=V')."""
  rest = [a for a in argv if not a.startswith(_OVERRIDE)]
  return rest, [a[len(_OVERRIDE):] for a in argv if a.startswith(_OVERRIDE)]


_extra: List[str] = []


def parse_flags(argv):
  rest, overrides = split_overrides(argv)
  _extra[:] = overrides
  return FLAGS(rest)


def report_only(root: str, metrics: Sequence[str], config: Optional[str], grid: str,
                fixed_items: Sequence[str]) -> int:
  sweep = state_lib.load(root)
  if sweep is None:
    raise grid_lib.SweepError(f"--report: {root} holds no {state_lib.SWEEP_FILE} (no sweep "
                              "ran or was planned there)")
  if config is not None:  # the full sweep command + --report: it must be this sweep
    spec = state_lib.spec(config, grid_lib.parse_grid(grid), grid_lib.parse_fixed(fixed_items))
    state_lib.check_same(root, spec, force=False)
  paths = report_lib.write(root, sweep, metrics)
  print(storage.read_text(paths["md"]), end="")
  for p in paths.values():
    print(f"[sweep] wrote {p}")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fixed_items = [*FLAGS.set, *_extra]
  try:
    if FLAGS.report:
      return report_only(FLAGS.root, FLAGS.metrics, FLAGS.config, FLAGS.grid, fixed_items)
    if FLAGS.config is None:
      raise app.UsageError("--config is required (or --report to only report)")
    sweep = state_lib.plan(FLAGS.root, FLAGS.config, FLAGS.grid, fixed_items, FLAGS.force)
    state_lib.save(FLAGS.root, sweep)
    if FLAGS.print_commands:
      launcher = shlex.split(FLAGS.launcher) if FLAGS.launcher else None
      for line in runner_lib.shell_commands(sweep, launcher):
        print(line)
      return 0
    rc = runner_lib.run_all(FLAGS.root, sweep)
    paths = report_lib.write(FLAGS.root, sweep, FLAGS.metrics or None)
    print(f"[sweep] report: {paths['md']}", flush=True)
    return rc
  except grid_lib.SweepError as e:
    sys.exit(f"sweep error: {e}")


if __name__ == "__main__":
  absl_run.run(main, flags_parser=parse_flags)
