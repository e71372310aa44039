"""Weight conversion (HF CLIP / BERT / RoBERTa / GPT-2 <-> ours) and export
for serving. CLI: `python -m metalm_jax.convert import-hf|check-hf|export-gpt2`."""
