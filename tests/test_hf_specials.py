"""An imported model's own tokenizer with the project's special tokens: they
are appended to an HF tokenizer.json (original ids and encodings unchanged),
the decoder gets their rows (the mean of the original rows; untied lm_head
too), `import-hf --component=decoder` does both, and the imported GPT-2 keeps
its logits on the original ids. Tokenizer files load by kind (.json / .model)."""
import json
import os
import pickle
import types

import ml_collections as mlc
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from metalm_jax import params_io  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf, hf_vocab  # noqa: E402
from metalm_jax.convert import hf_common as hc  # noqa: E402
from metalm_jax.data import hf_tokenizer, prepare, tasks  # noqa: E402
from metalm_jax.data.hf_tokenizer import HfTokenizer  # noqa: E402
from tests.hf_fixtures import GPT2_CFGS, RTOL, build_hf, save_hf  # noqa: E402
from tests.hf_tokenizer_fixtures import LLAMA_SPECIALS, train_bpe  # noqa: E402

TEXTS = ["the cat sits on the mat.", "a dog sits on a red mat!", "Question: is it red? answer: no",
         "two green cubes, 3 blue spheres."] * 10
ADDED = ["<eop>", "<image>", "</image>", "<audio>", "</audio>", "<video>", "</video>"]


def _vocab(path):
  return json.loads(open(path).read())["model"]["vocab"]


def test_specials_are_appended_and_old_ids_kept(tmp_path):
  src, dst = str(tmp_path / "a" / "tokenizer.json"), str(tmp_path / "b" / "tokenizer.json")
  os.makedirs(os.path.dirname(src))
  old = train_bpe(TEXTS, src)
  n = old.get_vocab_size()
  added = hf_tokenizer.add_project_specials(src, dst)
  assert (added.old_size, added.new_size) == (n, n + 7)
  assert added.tokens == {t: n + k for k, t in enumerate(ADDED)}
  assert _vocab(dst) == _vocab(src)  # every original id unchanged
  t = HfTokenizer(dst)
  eot = old.token_to_id("<|endoftext|>")
  assert t.vocab_size == n + 7 and t.bos == t.eos == t.eod == eot and t.missing_specials == ()
  roles = ("eop", "image_start", "image_end", "audio_start", "audio_end", "video_start",
           "video_end")
  assert [getattr(t, r) for r in roles] == [n + k for k in range(7)]
  for text in TEXTS[:4]:
    assert t.encode(text) == old.encode(text).ids
    assert t.decode(t.encode(text)) == text
  assert t.encode("<image>a cat</image>") == [n + 1] + old.encode("a cat").ids + [n + 2]
  assert t.decode([t.bos, n + 1, *t.encode("a cat"), n + 2, t.eop]) == "a cat"
  again = hf_tokenizer.add_project_specials(dst, str(tmp_path / "c.json"))
  assert again.tokens == {} and again.old_size == again.new_size == n + 7
  assert open(tmp_path / "c.json").read() == open(dst).read()
  assert pickle.loads(pickle.dumps(t)).encode(TEXTS[1]) == t.encode(TEXTS[1])  # grain workers


@pytest.mark.parametrize("specials,extra", [(LLAMA_SPECIALS, []), ((), ["<s>", "</s>"])])
def test_bos_and_eos_are_added_only_when_missing(tmp_path, specials, extra):
  src = str(tmp_path / "tokenizer.json")
  old = train_bpe(TEXTS, src, specials)
  n = old.get_vocab_size()
  added = hf_tokenizer.add_project_specials(src, str(tmp_path / "out.json"))
  assert added.tokens == {tok: n + k for k, tok in enumerate(extra + ADDED)}
  t = HfTokenizer(str(tmp_path / "out.json"))
  assert (t.bos, t.eos) == ((1, 2) if specials else (n, n + 1))


def _tree(vocab, emb, untied, seed=0):
  rng = np.random.default_rng(seed)
  tree = {"embedder": {"embedding": rng.normal(size=(vocab, emb)).astype(np.float32)},
          "blocks": {"w": np.ones(3, np.float32)}}
  if untied:
    tree["lm_head"] = {"kernel": rng.normal(size=(emb, vocab)).astype(np.float32)}
  return tree


@pytest.mark.parametrize("vocab,old_size,untied", [(20, 20, False), (20, 20, True),
                                                   (24, 20, True)])
def test_new_rows_are_the_mean_of_the_original_ones(vocab, old_size, untied):
  """(24, 20): a model with 4 rows past its tokenizer (Qwen2 pads its
  embedding): new ids 20..22 take those unused rows, 23 stays as it was."""
  tree = _tree(vocab, 6, untied)
  before = {k: v.copy() for k, v in params_io.flatten(tree).items()}
  section = mlc.ConfigDict(dict(vocab_size=vocab, tie_embeddings=not untied))
  new = [old_size, old_size + 1, old_size + 2]
  size = hf_vocab.add_token_rows(tree, section, old_size, new)
  assert size == section.vocab_size == max(vocab, old_size + 3)
  emb = tree["embedder"]["embedding"]
  assert emb.shape == (size, 6) and emb.dtype == np.float32
  np.testing.assert_array_equal(emb[:old_size], before["embedder/embedding"][:old_size])
  mean = before["embedder/embedding"][:old_size].astype(np.float64).mean(0).astype(np.float32)
  for i in new:
    np.testing.assert_array_equal(emb[i], mean)
  if vocab > old_size + 3:
    np.testing.assert_array_equal(emb[old_size + 3:], before["embedder/embedding"][old_size + 3:])
  if untied:
    k = tree["lm_head"]["kernel"]
    assert k.shape == (6, size)
    np.testing.assert_array_equal(k[:, :old_size], before["lm_head/kernel"][:, :old_size])
    col = before["lm_head/kernel"][:, :old_size].astype(np.float64).mean(1).astype(np.float32)
    np.testing.assert_array_equal(k[:, new], np.repeat(col[:, None], 3, 1))
  else:
    assert "lm_head" not in tree
  np.testing.assert_array_equal(tree["blocks"]["w"], before["blocks/w"])


def test_bad_row_requests_are_refused():
  section = mlc.ConfigDict(dict(vocab_size=20, tie_embeddings=True))
  with pytest.raises(ValueError, match=r"new token ids \[19, 20\] overlap .*old_size=20"):
    hf_vocab.add_token_rows(_tree(20, 4, False), section, 20, [19, 20])
  with pytest.raises(ValueError, match="old_size=21 must be in .*vocab_size=20"):
    hf_vocab.add_token_rows(_tree(20, 4, False), section, 21, [21])
  with pytest.raises(ValueError, match="has 18 rows, but model.decoder.vocab_size=20"):
    hf_vocab.add_token_rows(_tree(18, 4, False), section, 18, [20])


def _gpt2_dir(tmp_path, kw, seed):
  src = str(tmp_path / "tok.json")
  n = train_bpe(TEXTS, src).get_vocab_size()
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", dict(kw, vocab_size=n, bos_token_id=0,
                                                             eos_token_id=0)),
              tmp_path / "hf", seed=seed)
  os.replace(src, os.path.join(d, "tokenizer.json"))
  return d, n


@pytest.mark.parametrize("kw", [GPT2_CFGS[0], GPT2_CFGS[2]], ids=["tied", "untied"])
def test_gpt2_import_adds_specials_and_keeps_its_logits(tmp_path, kw):
  d, n = _gpt2_dir(tmp_path, kw, seed=5)
  out, plain = str(tmp_path / "out"), str(tmp_path / "plain")
  imp = hf.import_hf(d, "decoder", out)
  hf.import_hf(d, "decoder", plain, add_special_tokens=False)
  tree, meta = params_io.load_params(out)
  ptree, pmeta = params_io.load_params(plain)
  assert meta["added_tokens"] == {t: n + k for k, t in enumerate(ADDED)}
  assert meta["section"]["vocab_size"] == imp.section.vocab_size == n + 7
  assert pmeta["section"]["vocab_size"] == n and "added_tokens" not in pmeta
  t = HfTokenizer(os.path.join(out, meta["tokenizer"]))
  assert t.vocab_size == n + 7 and t.image_start == n + 1 and t.eop == n
  assert _vocab(os.path.join(out, "tokenizer.json")) == _vocab(os.path.join(d, "tokenizer.json"))
  emb, pemb = tree["embedder"]["embedding"], ptree["embedder"]["embedding"]
  np.testing.assert_array_equal(emb[:n], pemb)
  np.testing.assert_array_equal(emb[n:], np.broadcast_to(
      pemb.astype(np.float64).mean(0).astype(np.float32), (7, emb.shape[1])))
  assert ("lm_head" in tree) == (kw.get("tie_word_embeddings") is False)
  # Logits on the original ids: those of the import without the new rows, and HF's.
  ids = np.random.default_rng(0).integers(0, n, (2, 12)).astype(np.int32)
  ours = hc.decoder_logits(mlc.ConfigDict(meta["section"]), tree, {"tokens": ids})
  base = hc.decoder_logits(mlc.ConfigDict(pmeta["section"]), ptree, {"tokens": ids})
  assert ours.shape == (2, 12, n + 7)
  np.testing.assert_array_equal(ours[..., :n], base)
  model = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  assert np.abs(ours[..., :n] - ref).max() / np.abs(ref).max() <= RTOL


def test_cli_adds_specials_unless_told_not_to(tmp_path, capsys):
  d, n = _gpt2_dir(tmp_path, GPT2_CFGS[0], seed=6)
  assert cli.main(["import-hf", f"--model_dir={d}", "--component=decoder",
                   f"--out={tmp_path / 'on'}"]) == 0
  printed = capsys.readouterr().out
  assert f"'<image>': {n + 1}" in printed and f'"vocab_size": {n + 7}' in printed
  assert cli.main(["import-hf", f"--model_dir={d}", "--component=decoder",
                   f"--out={tmp_path / 'off'}", "--no-add_special_tokens"]) == 0
  assert f'"vocab_size": {n}' in capsys.readouterr().out
  off = HfTokenizer(str(tmp_path / "off" / "tokenizer.json"))
  assert off.vocab_size == n and off.image_start is None and off.eop is None
  assert params_io.load_params(str(tmp_path / "off"))[0]["embedder"]["embedding"].shape[0] == n


def test_run_tokenizer_is_picked_by_kind(tmp_path):
  """config.data.tokenizer may be a tokenizer.json: a decoder with more rows
  than tokens is fine (HF models pad), fewer is refused naming both."""
  path = str(tmp_path / "tokenizer.json")
  train_bpe(TEXTS, str(tmp_path / "raw.json"))
  hf_tokenizer.add_project_specials(str(tmp_path / "raw.json"), path)
  n = HfTokenizer(path).vocab_size
  cfg = mlc.ConfigDict(dict(data=dict(tokenizer=path), model=dict(decoder=dict(vocab_size=n))))
  assert isinstance(prepare.load_tokenizer(cfg), HfTokenizer)
  cfg.model.decoder.vocab_size = n + 64
  assert prepare.load_tokenizer(cfg).encode(TEXTS[0]) == HfTokenizer(path).encode(TEXTS[0])
  cfg.model.decoder.vocab_size = n - 1
  with pytest.raises(ValueError, match=f"HF tokenizer.json.*vocab_size={n} > "
                                       f"config.model.decoder.vocab_size={n - 1}"):
    prepare.load_tokenizer(cfg)


def test_a_tokenizer_without_eop_is_named_by_the_text_task(tmp_path):
  path = str(tmp_path / "tokenizer.json")
  train_bpe(TEXTS, path)
  ctx = types.SimpleNamespace(tokenizer=HfTokenizer(path), seq_len=64, max_doc_tokens=256)
  with pytest.raises(ValueError, match="no eop id .*add_project_specials"):
    tasks.TASKS.get("text")(ctx, {"text": "a cat.\n\na dog."}, None, tasks.new_stats())


def test_copied_tokenizer_keeps_the_roles_its_side_files_name(tmp_path):
  """A workdir or export copies a tokenizer.json with its HF side files, so a
  bos / eos named only there (Llama-3-Instruct's eos is <|eot_id|>) stays."""
  from metalm_jax import run_files
  src = tmp_path / "model"
  src.mkdir()
  train_bpe(TEXTS, str(src / "tokenizer.json"), ("<|begin|>", "<|end|>", "<|eot|>"))
  (src / "special_tokens_map.json").write_text(json.dumps(
      {"bos_token": "<|begin|>", "eos_token": {"content": "<|eot|>"}}))
  want = HfTokenizer(str(src / "tokenizer.json"))
  assert (want.bos, want.eos) == (0, 2)
  assert run_files.copy_tokenizer(str(src / "tokenizer.json"), str(tmp_path / "work")) == (
      "tokenizer.json")
  got = HfTokenizer(str(tmp_path / "work" / "tokenizer.json"))
  assert (got.bos, got.eos, got.pad) == (want.bos, want.eos, want.pad)
  assert sorted(os.listdir(tmp_path / "work")) == ["special_tokens_map.json", "tokenizer.json"]
