"""Ablation sweeps: a grid of config overrides, one run (workdir) per point.

    python -m metalm_jax.sweep --config=configs/pretrain_lang.py:size=tiny \
        --grid='data.spans.ratio=0.15,0.25,0.35;model.encoders.text.connector.type=linear,mlp' \
        --root=DIR [--set=total_steps=50 ...] [--config.FIELD=VALUE ...] \
        [--print_commands [--launcher='bash launch/tpu_pod.sh ...']] [--force]
    python -m metalm_jax.sweep --root=DIR --report [--metrics=loss,eval_loss]

Each run is `python -m metalm_jax.main --config=CONFIG --workdir=DIR/NAME
FIXED... --config.FIELD=VALUE...`, NAME made of its overrides
("data.spans.ratio=0.15,model.encoders.text.connector.type=linear"). Runs go
one after another; starting the same command again skips finished runs and
resumes the others from their checkpoints; DIR/sweep.json records the grid
and each run's status; the report gathers their final metrics.

Modules:
  grid.py     parse --grid / fixed overrides, check them against the config, expand
  state.py    DIR/sweep.json, which runs are finished
  runner.py   the commands and the run loop (an injectable run function)
  report.py   DIR/report.md, report.json, report.png
  __main__.py the command line
"""
