"""Models: layers, the causal decoder, the encoders (vision, text), connectors
and the docking MetaLM model; registries pick encoders and connectors by name."""
