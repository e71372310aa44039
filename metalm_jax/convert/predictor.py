"""Serving without the training stack (no optax / orbax / grain imports).

`Predictor(export_dir)` loads params.safetensors + config.json of an export
(convert/export.py) and answers caption ("Summarize this image:") and VQA
("question: ... answer:") prompts with greedy decoding. Decoding reuses the
project's KV-cache loop (metalm_jax.evaluate.decode.greedy: one prefill call
that docks the image, then one cached step per token); prompts are laid out by
metalm_jax.evaluate.prompts (left padding, `<image>` T docked positions
`</image>`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np

from metalm_jax import params_io
from metalm_jax import storage
from metalm_jax.convert.serving import next_token_logits
from metalm_jax.data.formats import CAPTION_PROMPT, VQA_TEMPLATE  # the task formats' prompts
from metalm_jax.evaluate import decode, prompts
from metalm_jax.models import metalm
from metalm_jax.registry import Registry

# File extension -> loader(path) -> tokenizer object.
TOKENIZER_FILES = Registry("tokenizer file type")


@TOKENIZER_FILES.register(".json")
def _hf_tokenizer(path):
  from metalm_jax.convert.hf_tokenizer import HfTokenizer
  return HfTokenizer(path)


@TOKENIZER_FILES.register(".model")
def _sentencepiece(path):
  from metalm_jax.data.tokenizer import Tokenizer
  return Tokenizer.from_file(path)


def load_tokenizer(path: str):
  return TOKENIZER_FILES.get(storage.path(path).suffix)(path)


def load_export(export_dir: str):
  """(model config ConfigDict, params numpy tree, config.json dict)."""
  params, meta = params_io.load_params(export_dir)
  if not meta or "model" not in meta:
    raise ValueError(f"{export_dir}/config.json has no 'model' section; not an export dir")
  return ml_collections.ConfigDict(meta["model"]), params, meta


class Predictor:
  """Greedy captioning and VQA from an export dir.

  tokenizer: an object with the data Tokenizer's interface; default: the
  tokenizer file saved in the export dir.
  """

  def __init__(self, export_dir: str, tokenizer: Any = None, max_new_tokens: int = 16):
    cfg, params, meta = load_export(export_dir)
    self.model_cfg = cfg
    self.model = metalm.build_model(cfg)
    params_io.check_params(metalm.abstract_variables(self.model)["params"], params,
                           f"params dir {export_dir}")
    self.params = jax.tree.map(np.asarray, params)
    if tokenizer is None:
      if "tokenizer" not in meta:
        raise ValueError(f"{export_dir} holds no tokenizer file; pass tokenizer=")
      tokenizer = load_tokenizer(storage.join(export_dir, meta["tokenizer"]))
    if tokenizer.vocab_size > cfg.decoder.vocab_size:
      raise ValueError(f"tokenizer vocab_size={tokenizer.vocab_size} > "
                       f"model.decoder.vocab_size={cfg.decoder.vocab_size}")
    self.tokenizer = tokenizer
    self.max_new_tokens = max_new_tokens
    vits = [n for n in sorted(cfg.encoders) if cfg.encoders[n].type == "vit"]
    self.image_encoder = vits[0] if vits else None

  def _image_part(self, image):
    if self.image_encoder is None:
      raise ValueError("the exported model has no 'vit' encoder; it cannot read images")
    for role in ("image_start", "image_end"):
      if getattr(self.tokenizer, role, None) is None:
        raise ValueError(f"tokenizer has no {role} token (<image> / </image>); add it")
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.floating):
      raise ValueError(f"image dtype={arr.dtype}: pass float pixels normalised as in training")
    return prompts.Image(arr.astype(np.float32), encoder=self.image_encoder)

  def generate_ids(self, prompt_parts: Sequence[Sequence[Any]],
                   max_new_tokens: Optional[int] = None) -> List[List[int]]:
    """Greedy ids per prompt (up to, excluding, eos)."""
    n = max_new_tokens or self.max_new_tokens
    tok = self.tokenizer
    batch = prompts.build_batch(prompt_parts, tok, self.model_cfg)
    batch = jax.tree.map(np.asarray, batch)
    res = decode.greedy(self.model, self.params, batch, max_new_tokens=n, eos_id=tok.eos,
                        pad_id=tok.pad)
    ids, lengths = np.asarray(res.ids), np.asarray(res.lengths)
    return [ids[i, :lengths[i]].tolist() for i in range(len(ids))]

  def _answer(self, images, texts, max_new_tokens):
    parts = [[self._image_part(im), prompts.Text(t)] for im, t in zip(images, texts)]
    return [self.tokenizer.decode(ids).strip()
            for ids in self.generate_ids(parts, max_new_tokens)]

  def caption(self, images: Sequence[Any], max_new_tokens: Optional[int] = None) -> List[str]:
    """Captions for float images [H, W, 3] (one string each)."""
    return self._answer(images, [CAPTION_PROMPT] * len(images), max_new_tokens)

  def vqa(self, images: Sequence[Any], questions: Sequence[str],
          max_new_tokens: Optional[int] = None) -> List[str]:
    if len(images) != len(questions):
      raise ValueError(f"{len(images)} images but {len(questions)} questions")
    texts = [VQA_TEMPLATE.format(question=q.strip()) for q in questions]
    return self._answer(images, texts, max_new_tokens)

  def next_token_logits(self, batch: Dict[str, Any]) -> np.ndarray:
    """In-process counterpart of the exported serving function."""
    return np.asarray(next_token_logits(self.model, self.params, batch))
