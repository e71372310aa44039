"""Weight conversion (HF CLIP / BERT / RoBERTa / Whisper / GPT-2 / Llama / Qwen2 /
Gemma <-> ours) and export for serving. CLI: `python -m metalm_jax.convert
import-hf|check-hf|export-hf|export-gpt2`."""
