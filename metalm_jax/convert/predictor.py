"""Serving as a user calls it: captions and answers for raw images, sound
clips and videos.

    p = Predictor(path)          # an export dir or a training workdir, local or gs://
    p.caption(images)            -> list[str]   ("Summarize this image:")
    p.vqa(images, questions)     -> list[str]   ("question: ... answer:")
    p.caption(clips, kind="audio")              ("Describe this sound:")
    p.vqa(videos, questions, kind="video")      (the video_qa format's prompt)
    p.generate_ids([[p.part(image, "image"), p.part(clip, "audio"),
                     prompts.Text("question: does the sound match the picture? answer:")]])

The prompts are the evaluation prompts of the task formats (data/formats.py,
`KIND_FORMATS`), so a served answer is asked exactly as the evaluators ask.
Every input goes through the training pipeline's own loader of its kind
(models/modalities/), with the encoder's constants from the served model config
and the normalisation training used (an export's config.json `preprocess`
section, a workdir's run config `data.image_mean` / `image_std`):

  image  a file path (str / os.PathLike, local or gs://), encoded bytes (PNG,
         JPEG, ...), a PIL image, or a numpy array: uint8 [H, W], [H, W, 3] or
         [H, W, 4], other integer types in [0, 255], or float in [0, 1] (or
         [0, 255]); any size and mode: `images.to_rgb` (RGBA composited over
         white, grayscale / palette / CMYK made RGB), then `preprocess_image`
         at the encoder's image_size;
  audio  a file path or encoded bytes (WAV, FLAC, OGG, MP3: media/audio.py
         decode_audio: downmix, resampling to the encoder's sample_rate, cut
         to max_seconds, zero-padding), (samples, rate), or a float waveform
         [n] or [n, channels] in [-1, 1] at the encoder's sample_rate; a clip
         the pipeline would skip (undecodable, silent) is refused by name;
  video  a file path or encoded bytes (mp4, webm, ...: media/video.py
         decode_video, frames sampled uniformly in time), or the pictures of
         a clip: a list of images (any of the image forms above) or one array
         [n, H, W, 3] of raw pixels, sampled by the same rule to the
         encoder's frame count, each preprocessed like an image.

`path` is detected: an export dir (params.safetensors + config.json, written
by convert/export.py) is served without the training stack (no optax / orbax /
grain imports); a training workdir (config.json + checkpoints/, see
run_files.py) has only the params of its latest checkpoint step restored
(Orbax, imported only then). The tokenizer is the one stored in either.

Decoding is greedy with the KV cache (metalm_jax.evaluate.decode.greedy);
prompts are laid out by metalm_jax.evaluate.prompts (left padding, `<image>`,
T docked positions, `</image>`; `<audio>` / `<video>` the same way). Prompts
are sorted by length and run in batches of `batch_size` rows (fewer, a power
of two, when a call has fewer prompts); each batch is left-padded to a length
bucket (`bucket_length`: powers of two >= 16 by default) and a short batch is
filled with copies of its last prompt, whose answers are dropped. So a compile
happens once per (bucket,
rows, max_new_tokens), not once per new prompt length; padding changes no
answer (pad positions are segment 0, invisible to the prompt).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image as PILImage

from metalm_jax import params_io, run_files
from metalm_jax import storage
from metalm_jax.convert.serving import next_token_logits
from metalm_jax.data import formats as formats_lib
from metalm_jax.data import tokenizer_kinds
from metalm_jax.media import images as images_lib
from metalm_jax.data.formats import CAPTION_PROMPT, VQA_TEMPLATE  # noqa: F401  re-exported
from metalm_jax.evaluate import decode, prompts
from metalm_jax.models import metalm, modalities

MIN_BUCKET = 16  # smallest default length bucket

# Media kind -> (caption format, question format): their evaluation prompts.
KIND_FORMATS = {"image": ("caption", "vqa"), "audio": ("audio_caption", "audio_qa"),
                "video": ("video_caption", "video_qa")}
# Why a loader gave None (its skip counter) -> what the user is told.
_REFUSALS = {"skipped_bad_image": "cannot be decoded as an image",
             "skipped_bad_audio": "cannot be decoded as audio",
             "skipped_silent_audio": "is silent (the pipeline skips clips whose peak is below "
                                     "media/audio.py SILENCE_PEAK)",
             "skipped_bad_video": "cannot be decoded as a video",
             "skipped_empty_video": "holds no frame"}

# ------------------------------------------------------------------ loading

class Served(NamedTuple):
  """What a Predictor serves, wherever it came from."""
  model_cfg: ml_collections.ConfigDict
  params: Any                    # numpy tree
  tokenizer: Optional[str]       # tokenizer file, if the source holds one
  norm: Dict[str, tuple]         # image_mean, image_std
  where: str                     # for error messages


def load_export(export_dir: str) -> Served:
  """An export dir (convert/export.py)."""
  params, meta = params_io.load_params(export_dir)
  if not meta or "model" not in meta:
    raise ValueError(f"{export_dir}/config.json has no 'model' section; not an export dir")
  tok = storage.join(export_dir, meta["tokenizer"]) if "tokenizer" in meta else None
  norm = images_lib.norm_constants(meta.get("preprocess"), f"{export_dir}/config.json preprocess")
  return Served(ml_collections.ConfigDict(meta["model"]), params, tok, norm,
                f"params dir {export_dir}")


def load_workdir(workdir: str, step: Optional[int] = None) -> Served:
  """A training workdir: its run config and the params of checkpoint `step`
  (default the latest)."""
  from metalm_jax.convert import export  # restores through Orbax
  run_cfg = export.load_run_config(workdir)
  params, step = export.restore_checkpoint_params(workdir, step)
  norm = images_lib.norm_constants(run_cfg.get("data"), f"{workdir}/config.json data")
  return Served(ml_collections.ConfigDict(run_cfg["model"]), params,
                export.run_tokenizer(run_cfg), norm, f"workdir {workdir} step {step}")


def load(path: str, step: Optional[int] = None) -> Served:
  """An export dir or a training workdir, told apart by their files."""
  if storage.exists(storage.join(path, params_io.PARAMS_FILE)):
    if step is not None:
      raise ValueError(f"step={step} given, but {path!r} is an export dir (one set of params)")
    return load_export(path)
  if storage.exists(storage.join(path, run_files.CHECKPOINTS_DIR)):
    return load_workdir(path, step)
  raise FileNotFoundError(f"{path!r} is neither an export dir ({params_io.PARAMS_FILE} + "
                          f"config.json) nor a training workdir (config.json + checkpoints/)")


# ------------------------------------------------------------------- inputs

def bucket_length(length: int, buckets: Optional[Sequence[int]] = None) -> int:
  """The padded length for a batch whose longest prompt takes `length`
  positions: buckets None -> the smallest power of two >= max(length, 16);
  a list -> its smallest entry >= length; () -> `length` (no bucketing)."""
  if buckets is None:
    return max(MIN_BUCKET, 1 << (int(length) - 1).bit_length())
  if not buckets:
    return int(length)
  fits = [b for b in buckets if b >= length]
  if not fits:
    raise ValueError(f"a prompt of {length} positions is longer than every bucket "
                     f"(buckets={list(buckets)}); add a larger one")
  return min(fits)


def _check_buckets(buckets) -> Optional[tuple]:
  if buckets is None:
    return None
  out = tuple(sorted(int(b) for b in buckets))
  if any(b < 1 for b in out):
    raise ValueError(f"buckets={list(buckets)} must be positive lengths")
  return out


def _read_file(value, where: str, what: str) -> bytes:
  if not storage.exists(value):
    raise FileNotFoundError(f"{where}: {what} file {os.fspath(value)!r} does not exist")
  return storage.read_bytes(value)


def _decodable(image, where: str):
  """A user's image as something `images.to_rgb` reads (bytes, PIL, array);
  refuses what it would read wrongly (normalised or non-pixel arrays)."""
  if isinstance(image, (str, os.PathLike)):
    return _read_file(image, where, "image")
  if isinstance(image, (bytes, bytearray, PILImage.Image)):
    return image
  arr = np.asarray(image)
  if arr.dtype == np.bool_ or arr.dtype.kind not in "uif":
    raise ValueError(f"{where}: array of dtype {arr.dtype} is not an image (uint8, integer "
                     f"or float pixels)")
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
    raise ValueError(f"{where}: array of shape {arr.shape} is not an image ([H, W] or "
                     f"[H, W, C] with C in 1..4)")
  if arr.dtype != np.uint8 and arr.size:
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
      raise ValueError(f"{where}: pixel values span [{lo}, {hi}]; pass raw pixels (uint8, or "
                       f"float in [0, 1] or [0, 255]), not normalised ones")
  return arr


def _decodable_audio(clip, where: str):
  """A user's clip as media/audio.py reads it: file bytes, (samples, rate) or
  a float waveform; refuses integer or non-numeric arrays (their scale is
  unknown) and arrays of more than two dimensions."""
  if isinstance(clip, (str, os.PathLike)):
    return _read_file(clip, where, "audio")
  if isinstance(clip, (bytes, bytearray)):
    return clip
  samples, rate = clip if isinstance(clip, tuple) and len(clip) == 2 else (clip, None)
  arr = np.asarray(samples)
  if arr.dtype.kind != "f" or arr.ndim not in (1, 2):
    raise ValueError(f"{where}: array of dtype {arr.dtype} and shape {arr.shape} is not a "
                     f"waveform; pass float samples [n] or [n, channels] in [-1, 1], "
                     f"(samples, rate), or encoded file bytes / a path")
  return arr if rate is None else (arr, int(rate))


def _decodable_video(video, where: str):
  """A user's video as media/video.py reads it: file bytes, or its pictures
  (each checked as an image)."""
  if isinstance(video, (str, os.PathLike)):
    return _read_file(video, where, "video")
  if isinstance(video, (bytes, bytearray)):
    return video
  if isinstance(video, np.ndarray) and video.ndim != 4:
    raise ValueError(f"{where}: array of shape {video.shape} is not a video ([frames, H, W, C])")
  return [_decodable(f, f"{where}[{i}]") for i, f in enumerate(video)]


# Media kind -> the check that turns a user's value into a loader input.
_DECODABLE = {"image": _decodable, "audio": _decodable_audio, "video": _decodable_video}


def _input_list(values, kind: str) -> List[Any]:
  name = "images" if kind == "image" else f"{kind} inputs"
  single = (str, bytes, bytearray, os.PathLike, PILImage.Image, np.ndarray)
  one_clip = (kind == "audio" and isinstance(values, tuple) and len(values) == 2
              and isinstance(values[1], (int, np.integer)))  # (samples, rate)
  if isinstance(values, single) or one_clip:
    raise TypeError(f"{name} must be a list of {kind}s, got one {type(values).__name__}; "
                    f"wrap a single {kind} in a list")
  return list(values)


# ---------------------------------------------------------------- predictor

class Predictor:
  """Greedy captioning and VQA on raw images (see the module docstring).

  tokenizer: an object with the data Tokenizer's interface; default: the
  tokenizer file stored in the export dir / workdir.
  batch_size: rows per decoding call. buckets: prompt-length buckets (see
  `bucket_length`). step: a workdir's checkpoint step (default the latest).
  """

  def __init__(self, path: str, tokenizer: Any = None, max_new_tokens: int = 16, *,
               batch_size: int = 8, buckets: Optional[Sequence[int]] = None,
               step: Optional[int] = None):
    self._setup(load(os.fspath(path), step), tokenizer, max_new_tokens, batch_size, buckets)

  @classmethod
  def from_params(cls, model_cfg, params, tokenizer, max_new_tokens: int = 16, *,
                  image_mean=images_lib.CLIP_MEAN, image_std=images_lib.CLIP_STD,
                  batch_size: int = 8, buckets: Optional[Sequence[int]] = None) -> "Predictor":
    """A Predictor over params in memory (e.g. right after training)."""
    norm = images_lib.norm_constants(dict(image_mean=image_mean, image_std=image_std),
                                     "Predictor.from_params")
    served = Served(ml_collections.ConfigDict(model_cfg), params, None, norm, "params")
    self = cls.__new__(cls)
    self._setup(served, tokenizer, max_new_tokens, batch_size, buckets)
    return self

  def _setup(self, served: Served, tokenizer, max_new_tokens, batch_size, buckets):
    cfg = served.model_cfg
    self.model_cfg = cfg
    self.model = metalm.build_model(cfg)
    params_io.check_params(metalm.abstract_variables(self.model)["params"], served.params,
                           served.where)
    self.params = jax.device_put(jax.tree.map(np.asarray, served.params))
    if tokenizer is None:
      if served.tokenizer is None:
        raise ValueError(f"{served.where} holds no tokenizer file; pass tokenizer=")
      tokenizer = tokenizer_kinds.load(served.tokenizer)
    if tokenizer.vocab_size > cfg.decoder.vocab_size:
      raise ValueError(f"tokenizer vocab_size={tokenizer.vocab_size} > "
                       f"model.decoder.vocab_size={cfg.decoder.vocab_size}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.tokenizer = tokenizer
    self.max_new_tokens = max_new_tokens
    self.batch_size = int(batch_size)
    self.buckets = _check_buckets(buckets)
    self.image_mean, self.image_std = served.norm["image_mean"], served.norm["image_std"]
    self.encoders = {}  # media kind -> the (first) encoder docking it
    for name in sorted(cfg.encoders):
      kind = modalities.kind_of_encoder(cfg.encoders[name].type)
      if kind is not None:
        self.encoders.setdefault(kind, name)
    self.image_encoder = self.encoders.get("image")

  def _kind(self, kind: str) -> str:
    if kind not in KIND_FORMATS:
      raise ValueError(f"kind={kind!r} is unknown; known: {sorted(KIND_FORMATS)}")
    if kind not in self.encoders:
      enc_type = modalities.MODALITIES.get(kind).encoder_type
      raise ValueError(f"the served model has no {enc_type!r} encoder; it cannot read "
                       f"{kind} (kind={kind!r})")
    return self.encoders[kind]

  def preprocess(self, value, kind: str = "image", where: Optional[str] = None) -> np.ndarray:
    """A raw input of media `kind` -> its encoder's float32 input (image [S,
    S, 3], audio [samples], video [frames, S, S, 3]), exactly as training
    (models/modalities/); what training would skip is refused naming why."""
    name = self._kind(kind)
    where = where or kind
    stats: Dict[str, int] = {}
    x = modalities.MODALITIES.get(kind).load(_DECODABLE[kind](value, where),
                                       self.model_cfg.encoders[name],
                                       (self.image_mean, self.image_std), stats)
    if x is None:
      why = next((_REFUSALS[k] for k in stats if k in _REFUSALS), f"is unusable ({stats})")
      raise ValueError(f"{where}: {why} ({type(value).__name__})")
    return x

  def part(self, value, kind: str = "image", where: Optional[str] = None):
    """A raw input as a prompt part (prompts.Image / Audio / Video) on its encoder."""
    name = self._kind(kind)
    modalities.brackets(self.tokenizer, kind)  # names the missing bracket tokens
    cls = next(c for c, k in prompts.MEDIA_PARTS.items() if k == kind)
    return cls(self.preprocess(value, kind, where), encoder=name)

  def generate_ids(self, prompt_parts: Sequence[Sequence[Any]],
                   max_new_tokens: Optional[int] = None) -> List[List[int]]:
    """Greedy ids per prompt (up to, excluding, eos), in the given order."""
    n = self.max_new_tokens if max_new_tokens is None else max_new_tokens
    tok, cfg = self.tokenizer, self.model_cfg
    parts = list(prompt_parts)
    if not parts:
      return []
    lengths = prompts.prompt_lengths(parts, tok, cfg)
    order = sorted(range(len(parts)), key=lengths.__getitem__)
    rows = min(self.batch_size, 1 << (len(parts) - 1).bit_length())
    out: List[List[int]] = [[] for _ in parts]
    for start in range(0, len(order), rows):
      idx = order[start:start + rows]
      chunk = [parts[i] for i in idx]
      chunk += [chunk[-1]] * (rows - len(chunk))
      seq_len = bucket_length(max(lengths[i] for i in idx), self.buckets)
      batch = prompts.build_batch(chunk, tok, cfg, seq_len=seq_len)
      res = decode.greedy(self.model, self.params, batch, max_new_tokens=n, eos_id=tok.eos,
                          pad_id=tok.pad)
      ids, got = np.asarray(res.ids), np.asarray(res.lengths)
      for r, i in enumerate(idx):
        out[i] = ids[r, :got[r]].tolist()
    return out

  def _answer(self, inputs, kind, texts, max_new_tokens):
    name = "images" if kind == "image" else kind
    parts = [[self.part(x, kind, f"{name}[{i}]"), prompts.Text(t)]
             for i, (x, t) in enumerate(zip(inputs, texts))]
    return [self.tokenizer.decode(ids).strip()
            for ids in self.generate_ids(parts, max_new_tokens)]

  def caption(self, inputs: Sequence[Any], max_new_tokens: Optional[int] = None, *,
              kind: str = "image") -> List[str]:
    """One caption per input of media `kind`, asked with its caption format's
    evaluation prompt ("Summarize this image:", "Describe this sound:", ...)."""
    self._kind(kind)
    inputs = _input_list(inputs, kind)
    prompt = formats_lib.FORMATS.get(KIND_FORMATS[kind][0]).eval_template()
    return self._answer(inputs, kind, [prompt] * len(inputs), max_new_tokens)

  def vqa(self, inputs: Sequence[Any], questions: Sequence[str],
          max_new_tokens: Optional[int] = None, *, kind: str = "image") -> List[str]:
    """One answer per (input, question) pair, asked with the question format's
    evaluation prompt ("question: ... answer:")."""
    self._kind(kind)
    inputs = _input_list(inputs, kind)
    if isinstance(questions, str):
      raise TypeError("questions must be a list of strings, got one str; wrap it in a list")
    questions = list(questions)
    if len(inputs) != len(questions):
      raise ValueError(f"{len(inputs)} {'images' if kind == 'image' else kind + ' inputs'} "
                       f"but {len(questions)} questions")
    template = formats_lib.FORMATS.get(KIND_FORMATS[kind][1]).eval_template()
    texts = [template.format(question=q.strip()) for q in questions]
    return self._answer(inputs, kind, texts, max_new_tokens)

  def next_token_logits(self, batch: Dict[str, Any]) -> np.ndarray:
    """In-process counterpart of the exported serving function."""
    return np.asarray(next_token_logits(self.model, self.params, batch))
