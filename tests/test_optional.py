"""Packages of a setup.py extra (matplotlib, tokenizers): a missing one is an
ImportError that names the extra, and the trainer's loss curve degrades to a
logged warning."""
import logging
import sys

import pytest

from metalm_jax import optional
from metalm_jax.data import hf_tokenizer
from metalm_jax.train import metrics as metrics_lib


def _hide(monkeypatch, *modules):
  for m in modules:  # None in sys.modules: `import m` raises ModuleNotFoundError(name=m)
    monkeypatch.setitem(sys.modules, m, None)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, caplog):
  w = metrics_lib.Writer(str(tmp_path))
  w.write(1, {"loss": 2.0})
  w.close()
  _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
  with pytest.raises(ImportError, match=r"loss curve .*'matplotlib'.*metalm_jax\[plot\]"):
    metrics_lib.plot_losses(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    assert metrics_lib.plot_losses_or_warn(str(tmp_path)) is None
  assert "pip install 'metalm_jax[plot]'" in caplog.text
  assert not (tmp_path / metrics_lib.LOSS_PNG).exists()


def test_missing_tokenizers_names_the_extra(tmp_path, monkeypatch):
  path = tmp_path / "tokenizer.json"
  path.write_text("{}")
  _hide(monkeypatch, "tokenizers")
  with pytest.raises(ImportError,
                     match=r"tokenizer.json .*metalm_jax\[hf\].*metalm_jax\[notebook\]"):
    hf_tokenizer.HfTokenizer(str(path))


def test_require_returns_the_module_and_passes_inner_failures_through(monkeypatch):
  assert optional.require("matplotlib", "x").__name__ == "matplotlib"
  # The package is there but one of its own imports fails: that error, not a hint.
  _hide(monkeypatch, "matplotlib.pyplot")
  with pytest.raises(ModuleNotFoundError) as e:
    optional.require("matplotlib.pyplot", "x")
  assert e.value.name == "matplotlib.pyplot"
  with pytest.raises(ValueError, match="'numpyy' is in no extra"):
    optional.require("numpyy", "x")


def test_missing_av_names_the_extra(monkeypatch):
  """Without PyAV the video decoder raises naming metalm_jax[media]; it never
  counts the files as bad."""
  from metalm_jax.media import video
  _hide(monkeypatch, "av")
  with pytest.raises(ImportError, match=r"decoding video files .*metalm_jax\[media\]"):
    video.decode_video(b"\x00", frames=2, image_size=8)
