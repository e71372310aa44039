"""One record per modality (base.Modality: batch inputs, encoder, preset,
loader, brackets), registered in `MODALITIES` by the files of this folder:

  image.py  "vit"      CLIP-shaped ViT, every patch token (+ class token) docked
  text.py   "bert"     BERT/RoBERTa-shaped encoder, one vector per span token
  audio.py  "whisper"  Whisper-shaped encoder pooled to num_vectors per clip
  video.py  "video"    the ViT per frame, temporal layers, num_vectors per clip
"""
from metalm_jax.models.modalities import audio, image, text, video  # registers them
from metalm_jax.models.modalities.base import (MODALITIES, Modality, brackets,
                                               by_encoder_type, encoder_types,
                                               kind_of_encoder, media_kinds, register,
                                               slot_length)

__all__ = ["MODALITIES", "Modality", "audio", "brackets", "by_encoder_type", "encoder_types",
           "image", "kind_of_encoder", "media_kinds", "register", "slot_length", "text", "video"]
