"""Export for serving: params-only safetensors, model config, a jax.export
function and (when the decoder is GPT-2, Llama, Qwen2 or Gemma shaped) an
HF copy of the decoder.

Export dir layout (`export_model`):
  params.safetensors   params only (no optimizer state). Names are the param
                       tree paths joined by '/', e.g.
                       'decoder/layers_0/attn/query/kernel' [emb, heads, head_dim],
                       'encoders_vision/vit/patch_embed/kernel' [p, p, 3, emb];
                       param_names.json lists every name with shape and dtype.
  config.json          {"model": <model config section>, "serving": {...},
                       "preprocess": {"image_mean": [r, g, b], "image_std":
                       [r, g, b], "steps": ..., "encoders": {name: {...}}}}:
                       the normalisation constants of training (the run
                       config's data.image_mean / image_std), applied by the
                       Predictor with the training functions
                       (metalm_jax/media/images.py); per audio / video encoder
                       the constants its inputs are decoded with (audio:
                       sample_rate, max_seconds, samples, silence_peak;
                       video: frames, image_size) and the decoding steps
                       (media/audio.py, media/video.py, models/modalities/).
  next_token_logits.stablehlo
                       jax.export-serialised fn(params, batch) -> float32
                       [B, vocab]: logits after the last real position
                       (segment_ids > 0) of each row. `batch` holds the
                       contract arrays SERVING_KEYS plus `encoders` (every
                       encoder's inputs: pixels, waveform, frames, tokens;
                       batch.py); the batch
                       size is symbolic, the sequence length fixed
                       (config.json serving.seq_len); lowered for
                       cpu, cuda and tpu (serving.platforms).
  tokenizer.json | tokenizer.model   when the run config names one (a
                       tokenizer.json with its HF side files).
  hf_<family>/         the decoder as an HF model dir of its family (hf_gpt2,
                       hf_llama, hf_qwen2 or hf_gemma; convert/hf_export.py),
                       loadable by the family's *ForCausalLM.from_pretrained;
                       config.json "hf_decoder": {"family", "dir"} (and
                       "hf_gpt2": "hf_gpt2" for GPT-2, as earlier exports).
  lora/                with LoRA adapters exported `lora="separate"`: a params
                       dir of only the adapters (convert/lora_export.py).

LoRA (model.decoder.lora on): `lora="merge"` (default) folds the adapters
into the base kernels (W + alpha / rank * A . B) before anything is
written, so params, the serving function, config.json (lora.enabled False)
and the HF dir are those of a plain decoder; `lora="separate"` keeps them
apart: params.safetensors and the serving function hold the adapters as
their own tensors, the HF dir holds the base decoder, and lora/ the
adapters alone. config.json "lora" records the mode, rank, alpha and targets.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax import params_io, run_files
from metalm_jax import storage
from metalm_jax.convert import hf_export, lora_export
from metalm_jax.convert.serving import SERVING_KEYS, next_token_logits, serving_batch
from metalm_jax.media import audio as audio_lib
from metalm_jax.media import images
from metalm_jax.models import layout, metalm

SERVING_FILE = "next_token_logits.stablehlo"
NAMES_FILE = "param_names.json"
def hf_subdir(family: str) -> str:
  """The export's subdir holding the decoder as an HF dir of `family`."""
  return f"hf_{family}"

PREPROCESS_STEPS = ("metalm_jax.media.images: to_rgb (alpha composited over white, other modes "
                    "converted to RGB), then preprocess_image (bicubic resize of the whole image "
                    "to the encoder's image_size, /255, (x - image_mean) / image_std)")

AUDIO_STEPS = ("metalm_jax.media.audio: decode_audio (WAV / FLAC / OGG / MP3 via libsndfile; "
               "channels averaged to mono, polyphase resampling to sample_rate, cut to "
               "max_seconds, zero-padded to samples; clips with peak < silence_peak refused)")
VIDEO_STEPS = ("metalm_jax.media.video: decode_video (PyAV / FFmpeg) or decode_frame_list "
               "(pictures at times 0, 1, ...): `frames` frames sampled uniformly in time "
               "(bin centres), each preprocessed like an image (image_mean / image_std)")


def _audio_constants(enc) -> Dict[str, Any]:
  return {"kind": "audio", "sample_rate": int(enc.sample_rate),
          "max_seconds": float(enc.max_seconds),
          "samples": audio_lib.clip_samples(int(enc.sample_rate), float(enc.max_seconds)),
          "silence_peak": audio_lib.SILENCE_PEAK, "steps": AUDIO_STEPS}


def _video_constants(enc) -> Dict[str, Any]:
  return {"kind": "video", "frames": int(enc.frames), "image_size": int(enc.image_size),
          "steps": VIDEO_STEPS}


# Encoder type -> the input constants an export stores for it.
MEDIA_CONSTANTS = {"whisper": _audio_constants, "video": _video_constants}


def media_preprocess(model_cfg) -> Dict[str, Dict[str, Any]]:
  """{encoder name: its input constants} for the audio / video encoders."""
  return {name: MEDIA_CONSTANTS[enc.type](enc) for name, enc in sorted(model_cfg.encoders.items())
          if enc.type in MEDIA_CONSTANTS}


def _abstract_params(model):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      nn.meta.unbox(metalm.abstract_variables(model)["params"]))


DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def export_serving(model: metalm.MetaLM, seq_len: int,
                   platforms=DEFAULT_PLATFORMS) -> jax.export.Exported:
  """jax.export of `next_token_logits` with a symbolic batch size 'b',
  lowered for each of `platforms` (one artefact serves all of them)."""
  (b,) = jax.export.symbolic_shape("b")
  spec = batch_lib.batch_spec(model.cfg, 1, seq_len)

  def sym(node):
    if isinstance(node, dict):
      return {k: sym(v) for k, v in node.items()}
    shape, dtype = node
    return jax.ShapeDtypeStruct((b,) + tuple(shape[1:]), dtype)

  batch = serving_batch(sym(spec))
  fn = jax.jit(lambda p, x: next_token_logits(model, p, x))
  return jax.export.export(fn, platforms=tuple(platforms))(_abstract_params(model), batch)


def check_params(model: metalm.MetaLM, params) -> None:
  """Raises listing every param whose name or shape differs from the model,
  and every one holding a NaN/Inf."""
  params_io.check_params(_abstract_params(model), params, "export")


def export_model(model_cfg, params, out: str, *, seq_len: Optional[int] = None,
                 tokenizer: Optional[str] = None, hf_decoder: bool = True,
                 platforms=DEFAULT_PLATFORMS, image_mean=images.CLIP_MEAN,
                 image_std=images.CLIP_STD, hf_gpt2: Optional[bool] = None,
                 lora: str = "merge") -> Dict[str, str]:
  """Writes the export dir (see module docstring); returns {what: path}.
  image_mean / image_std: the normalisation the model was trained with.
  hf_decoder: also write the decoder as an HF dir of its family, when it
  maps to one (`hf_gpt2` is the older name of this switch). lora: "merge"
  or "separate", for a decoder with LoRA adapters (module docstring)."""
  if hf_gpt2 is not None:
    hf_decoder = hf_gpt2
  norm = images.norm_constants(dict(image_mean=image_mean, image_std=image_std), "export_model")
  lora_export.check_mode(lora)
  lora_meta = lora_export.summary(model_cfg.decoder, lora)
  params = jax.tree.map(np.asarray, nn.meta.unbox(params))
  adapters_section = model_cfg.decoder
  if lora_meta and lora == "merge":
    merged_cfg, params = lora_export.merge_model(model_cfg, params)
    model_cfg = ml_collections.ConfigDict(merged_cfg)
  model = metalm.build_model(model_cfg)
  params = layout.match(params, _abstract_params(model))
  check_params(model, params)
  seq_len = int(seq_len or model_cfg.decoder.max_len)
  too_long = model_cfg.decoder.positions != "rotary" and seq_len > model_cfg.decoder.max_len
  if seq_len < 1 or too_long:
    raise ValueError(f"seq_len={seq_len} must be in [1, model.decoder.max_len="
                     f"{model_cfg.decoder.max_len}]")
  cfg_dict = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  serving = {"seq_len": seq_len, "file": SERVING_FILE, "batch_keys": list(SERVING_KEYS),
             "output": "float32 [b, vocab] next-token logits", "platforms": list(platforms)}
  written = {"params": params_io.save_params(out, params, None)}
  flat = params_io.flatten(params)
  storage.write_text(storage.join(out, NAMES_FILE), json.dumps(
      {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in flat.items()},
      indent=1, sort_keys=True))
  exported = export_serving(model, seq_len, platforms)
  written["serving"] = storage.write_bytes(storage.join(out, SERVING_FILE), exported.serialize())
  meta = {"model": cfg_dict, "serving": serving,
          "preprocess": {**{k: list(v) for k, v in norm.items()}, "steps": PREPROCESS_STEPS,
                         "encoders": media_preprocess(model_cfg)}}
  if lora_meta:
    meta["lora"] = lora_meta
    if lora == "separate":
      sub = storage.join(out, lora_export.ADAPTERS_DIR)
      written["lora"] = lora_export.save_adapters(sub, adapters_section, params["decoder"])
      meta["lora"]["dir"] = lora_export.ADAPTERS_DIR
  if tokenizer:
    name = run_files.copy_tokenizer(tokenizer, out)  # with a tokenizer.json's HF side files
    written["tokenizer"] = meta["tokenizer"] = name
  if hf_decoder:
    try:
      family = hf_export.family_of(model_cfg.decoder)
    except ValueError as e:  # no HF family expresses it: a logged skip, not an error
      logging.warning("export: decoder not written as an HF model dir: %s", e)
    else:
      sub = hf_subdir(family)
      # The base decoder when the adapters stay apart (lora="separate").
      _, written[sub] = hf_export.save_hf_decoder(storage.join(out, sub), model_cfg.decoder,
                                                  params["decoder"], family, lora=lora)
      meta["hf_decoder"] = {"family": family, "dir": sub}
      if lora_meta:
        meta["hf_decoder"]["lora"] = lora  # "merge": merged; "separate": the base
      if family == "gpt2":
        meta["hf_gpt2"] = sub
  storage.write_json(storage.join(out, params_io.CONFIG_FILE), meta)
  return written


# ------------------------------------------------------------- from a workdir

def _strip_boxes(tree):
  """{'value': x} (a saved LogicallyPartitioned box) -> x, recursively."""
  if isinstance(tree, Mapping):
    if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
      return tree["value"]
    return {k: _strip_boxes(v) for k, v in tree.items()}
  return tree


def restore_checkpoint_params(workdir: str, step: Optional[int] = None) -> Tuple[Any, int]:
  """(params as numpy, step) from `workdir/checkpoints` (Orbax, item `state`
  holding `params`); only the params are read, onto the host."""
  import orbax.checkpoint as ocp
  directory = storage.join(workdir, run_files.CHECKPOINTS_DIR)
  if not storage.path(directory).is_dir():
    raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints/ directory")
  mgr = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint step in {directory!r}")
    meta = mgr.item_metadata(step)["state"]
    if meta is None or "params" not in meta:
      raise ValueError(f"checkpoint {directory}/{step}/state has no 'params' entry")
    sub = {"params": meta["params"]}
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), sub)
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), sub)
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
  finally:
    mgr.close()
  return _strip_boxes(dict(out["state"]["params"])), step


def load_run_config(workdir: str) -> Dict[str, Any]:
  """WORKDIR/config.json, its tokenizer as a full path (run_files.py)."""
  cfg = run_files.load_run_config(workdir)
  if "model" not in cfg:
    raise ValueError(f"{workdir}/config.json has no 'model' section")
  return cfg


def run_tokenizer(run_cfg: Mapping[str, Any]) -> Optional[str]:
  """The tokenizer file a run config names (`data.tokenizer`), if any."""
  path = (run_cfg.get("data") or {}).get("tokenizer") or None
  if path and not storage.exists(path):
    raise FileNotFoundError(f"config data.tokenizer={path!r} does not exist")
  return path


def export_workdir(workdir: str, out: str, *, seq_len: Optional[int] = None,
                   tokenizer: Optional[str] = None, step: Optional[int] = None,
                   lora: str = "merge") -> Dict[str, str]:
  """Latest checkpoint of a training run -> export dir (`lora`: how LoRA
  adapters are written, "merge" or "separate")."""
  run_cfg = load_run_config(workdir)
  model_cfg = ml_collections.ConfigDict(run_cfg["model"])
  params, step = restore_checkpoint_params(workdir, step)
  logging.info("export: %s step %d -> %s", workdir, step, out)
  tok = tokenizer or run_tokenizer(run_cfg)
  if tok is None:
    logging.warning("export: the run config names no tokenizer (data.tokenizer); the "
                    "Predictor will need one passed in")
  norm = images.norm_constants(run_cfg.get("data"), f"{workdir}/config.json data")
  written = export_model(model_cfg, params, out, seq_len=seq_len, tokenizer=tok, lora=lora,
                         **norm)
  written["step"] = str(step)
  return written


def decoder_section_from(config: Optional[Mapping[str, Any]], where: str) -> Dict[str, Any]:
  """The decoder config section of an export dir or an import-hf decoder dir."""
  if config and "model" in config:
    return config["model"]["decoder"]
  if config and config.get("component") == "decoder":
    return config["section"]
  raise ValueError(f"{where}/config.json holds neither an export ('model') nor an "
                   f"imported decoder ('component': 'decoder')")


def main(argv=None) -> int:
  """python -m metalm_jax.export --workdir=W --out=D [--seq_len=N --tokenizer=F --step=S
  --lora=merge|separate]"""
  import argparse
  p = argparse.ArgumentParser(prog="python -m metalm_jax.export")
  p.add_argument("--workdir", required=True, help="training run dir (config.json, checkpoints/)")
  p.add_argument("--out", required=True, help="export dir to write")
  p.add_argument("--seq_len", type=int, default=None,
                 help="sequence length of the serving function (default decoder max_len)")
  p.add_argument("--tokenizer", default=None, help="tokenizer file (default: data.tokenizer)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  p.add_argument("--lora", choices=lora_export.MODES, default="merge",
                 help="LoRA adapters: merged into the base kernels, or kept apart with an "
                      "adapters-only params dir lora/ (default merge)")
  args = p.parse_args(argv)
  written = export_workdir(args.workdir, args.out, seq_len=args.seq_len,
                           tokenizer=args.tokenizer, step=args.step, lora=args.lora)
  for what, path in sorted(written.items()):
    print(f"{what}: {path}")
  return 0
