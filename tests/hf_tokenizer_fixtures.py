"""HF tokenizer.json files built offline for tests (not a test module; needs
the `tokenizers` package): byte-level BPE (GPT-2's recipe) trained with
tokenizers' BpeTrainer, on given texts or on the embedded world's tokenizer
text (`prepare.world_texts`, what the world's SentencePiece model trains on)."""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from metalm_jax.data import prepare

GPT2_SPECIALS = ("<|endoftext|>",)         # bos = eos, as GPT-2 and Qwen2 base
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as Llama 1/2


def train_bpe(texts, path: str, specials=GPT2_SPECIALS, vocab_size: int = 600) -> Tokenizer:
  """A byte-level BPE over `texts` with `specials` first, saved to `path`."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path))
  return tok


def world_bpe(data_cfg, path: str, specials=GPT2_SPECIALS, vocab_size: int = 600) -> Tokenizer:
  """train_bpe on the world's tokenizer text (train split of `data_cfg`'s world)."""
  records = prepare.world_records(data_cfg, "train")
  return train_bpe(prepare.world_texts(records), path, specials, vocab_size)
