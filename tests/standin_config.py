"""The stand-in trainer config (tests/train_standin.py) as a config file
for the entry point: `--config=tests/standin_config.py`."""
from tests import train_standin as S


def get_config():
  return S.tiny_train_config(total_steps=6, eval_every=0)
