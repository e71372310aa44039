"""Decoders of docked media, shared by the data pipeline, the evaluators and
the serving Predictor (numpy / PIL / libsndfile / PyAV; no jax):

  images.py  any picture -> RGB -> resized, CLIP-normalised float32 [S, S, 3]
  audio.py   encoded audio files or waveforms -> mono float32 at the
             encoder's rate, cut / zero-padded to its clip length
  video.py   encoded video files or lists of pictures -> F frames sampled
             uniformly in time, each preprocessed like an image

Each returns None for unusable input and counts why (the pipeline's skip
counters). Which encoder docks which kind: metalm_jax/models/modalities/.
"""
