"""Videos: the ViT on every frame, then time (encoder type "video",
models/video.py), pooled to `num_vectors` docked vectors per clip."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from metalm_jax import presets
from metalm_jax.media import video as video_lib
from metalm_jax.models import video as video_model
from metalm_jax.models.modalities import audio, base

_ENCODED = (bytes, bytearray, memoryview, np.bytes_)  # file contents


class VideoItems(nn.Module):
  """Clips frames [B, N, F, H, W, 3] -> [B, N, num_vectors, width]; invalid
  clips are encoded as zeros."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    return video_model.VideoEncoder(self.cfg, self.dtype, name="video")(
        base.valid_only(inputs["frames"], inputs), deterministic)


def inputs(cfg, b):
  """frames float32 [B, N, F, S, S, 3] (normalised like images, F =
  cfg.frames), valid bool [B, N]."""
  n, f, s = cfg.max_items, cfg.frames, cfg.image_size
  return {"frames": ((b, n, f, s, s, 3), np.float32), "valid": ((b, n), np.bool_)}


def load(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded file bytes (media/video.py decode_video), or a sequence of
  pictures / an array [n, H, W, 3] (decode_frame_list) -> float32
  [frames, S, S, 3] sampled uniformly in time, or None (counted)."""
  decode = (video_lib.decode_video if isinstance(value, _ENCODED)
            else video_lib.decode_frame_list)
  clip, counts = decode(value, frames=int(enc_cfg.frames), image_size=int(enc_cfg.image_size),
                        mean=norm[0], std=norm[1])
  base.merge_counts(stats, counts)
  return clip


VIDEO = base.register(base.Modality(
    name="video", encoder_type="video", encoder=VideoItems, preset=presets.video,
    inputs=inputs, slot_length=audio.num_vectors, key="frames",
    brackets=("video_start", "video_end"), load=load,
    check_config=video_model.check_config, flops_tokens=video_model.flops_tokens))
