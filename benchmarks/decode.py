"""Generation speed: the KV-cache decoder against a no-cache loop, and how
many compiles 20 questions of different lengths cost the Predictor.

    python benchmarks/decode.py --config=configs/pretrain_vl.py:size=bench
    python benchmarks/decode.py --config=configs/pretrain_vl.py:size=tiny --new_tokens=64

Model: `config.model` with random params (speed does not depend on training).
Prompt: `<s> <image> [image] </image> question: ... answer:` (one image docked
per row, metalm_jax/evaluate/prompts.py).

1. Greedy generation of --new_tokens tokens per row (eos disabled, so every
   row runs to the end), per batch size in --batch_sizes:
   - cached:   metalm_jax.evaluate.decode.greedy (one prefill, then one cached
               token per step inside a jitted while_loop);
   - no cache: one jitted fori_loop whose every step runs the full forward
               pass (encoder included) over prompt + new-token slots.
   Both are compiled first (compile times printed), then timed, median of
   --repeats runs. First-token latency: the cached path with one new token
   (cache init + prefill + pick) against one full forward pass of the prompt.
   Also prints whether both loops generated the same ids.
2. Race against HF `generate` (--hf_race) on the PyTorch/HF reference of the
   same model (benchmarks/torch_reference.py: GPT2LMHeadModel + CLIP vision +
   linear connector): its random init (torch seed 0, matmul weights times
   --race_weight_scale) converted into our params, so both sides run the same
   weights. Same prompt (the image docked into HF's inputs_embeds), greedy, eos
   off, --new_tokens ids, per batch size; ours (metalm_jax.evaluate.decode.greedy)
   and HF's timed in turn, median of --repeats, after one warm-up call each.
   Prints tokens/s of both and the fraction of equal ids (float32: equal
   unless near-ties). Torch runs --torch_threads intra-op threads with
   OMP_WAIT_POLICY=--torch_omp_wait (set in the environment: the script
   re-executes itself, as benchmarks/train_step.py does).
3. Compiles for 20 questions of 20 different prompt lengths, asked one at a
   time and in one batched call, by the Predictor (Predictor.from_params, a
   SentencePiece tokenizer trained on the embedded world's captions), with
   the default length buckets and without (buckets=()). Compiles are counted
   by metalm_jax.evaluate.decode.trace_count.

Numbers depend on the machine and its load: the script prints the date, the
device and the load average; state them with any figure you quote.
--json_out writes the figures with their provenance (metalm_jax/provenance.py:
commit, versions, device, load average at the start and the end).
"""
import datetime
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from metalm_jax import absl_run  # noqa: E402

config_flags.DEFINE_config_file("config", None, "train config file[:arg] (its .model is used)")
flags.DEFINE_integer("new_tokens", 128, "generated tokens per row")
flags.DEFINE_list("batch_sizes", ["1", "8"], "rows per generation call")
flags.DEFINE_integer("repeats", 3, "timed runs per measurement (median)")
flags.DEFINE_integer("qa_new_tokens", 8, "max_new_tokens of the 20-question part")
flags.DEFINE_bool("unbucketed", True, "also run the 20 questions without buckets")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
flags.DEFINE_bool("hf_race", True, "also race HF generate on the torch reference (greedy)")
flags.DEFINE_float("race_weight_scale", 10.0, "the race's matmul weights times this (at GPT-2's "
                   "init scale greedy repeats one id, which makes equal ids say little)")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads")
flags.DEFINE_enum("torch_omp_wait", "passive", ["passive", "active"],
                  "OMP_WAIT_POLICY for torch (unless set in the environment): 'active' "
                  "spin-waits, which collapses torch's speed on an oversubscribed machine")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS

QUESTION_WORDS = ("what is the colour of the big shape to the left of the small red circle "
                  "in this picture and how many").split()


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _compile_time(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def make_tokenizer(vocab_size, out_dir):
  """A SentencePiece tokenizer of exactly `vocab_size` pieces, trained on the
  embedded world's captions and questions."""
  import numpy as np
  from metalm_jax.data import tokenizer as tok_lib
  from metalm_jax.data import world
  rng = np.random.default_rng(0)
  texts = [" ".join(QUESTION_WORDS)]
  for i in range(300):
    objs = world.make_scene(0, "train", i)
    texts += world.captions(objs, rng) + [q["question"] for q in world.questions(objs, rng)]
  return tok_lib.train_tokenizer(texts, vocab_size, os.path.join(out_dir, "tok.model"))


def no_cache_loop(model, n):
  """Jitted greedy without a cache: fn(params, grown_batch, prompt_len) ->
  ids [B, n]; `grown_batch` is the prompt followed by n padding slots."""
  import jax
  import jax.numpy as jnp

  def run(params, batch, length):
    rows = batch["tokens"].shape[0]

    def step(i, carry):
      b, ids = carry
      t = length + i - 1  # last filled position
      logits = model.apply({"params": params}, b)
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, 1, False), -1).astype(jnp.int32)
      pos = jax.lax.dynamic_index_in_dim(b["positions"], t, 1, False) + 1
      b = dict(b, tokens=b["tokens"].at[:, t + 1].set(nxt),
               segment_ids=b["segment_ids"].at[:, t + 1].set(1),
               positions=b["positions"].at[:, t + 1].set(pos))
      return b, ids.at[:, i].set(nxt)

    ids = jnp.zeros((rows, n), jnp.int32)
    return jax.lax.fori_loop(0, n, step, (batch, ids))[1]

  return jax.jit(run, static_argnums=2)


def grow(batch, n):
  """The prompt batch followed by n empty (segment 0) slots."""
  import numpy as np
  out = dict(batch)
  for k, v in batch.items():
    if k != "encoders":
      v = np.asarray(v)
      out[k] = np.concatenate([v, np.zeros((v.shape[0], n), v.dtype)], 1)
  return out


def prompt_batch(model_cfg, tok, rows, image):
  """`rows` copies of the benchmark's prompt (numpy batch)."""
  import jax
  import numpy as np
  from metalm_jax.evaluate import prompts
  parts = [[prompts.Image(image), prompts.Text("question: what is the colour of the circle? "
                                               "answer:")]] * rows
  return jax.tree.map(np.asarray, prompts.build_batch(parts, tok, model_cfg))


def kv_vs_no_cache(model, params, tok, rows, n, repeats, image):
  import jax
  import numpy as np
  from metalm_jax.evaluate import decode
  batch = prompt_batch(model.cfg, tok, rows, image)
  length = batch["tokens"].shape[1]
  cached = lambda k: decode.greedy(model, params, batch, max_new_tokens=k, eos_id=None,
                                   pad_id=tok.pad).ids.block_until_ready()
  loop = no_cache_loop(model, n)
  grown = grow(batch, n)
  slow = lambda: loop(params, grown, length).block_until_ready()
  forward = jax.jit(lambda p, b: model.apply({"params": p}, b)[:, -1].argmax(-1))
  first_slow = lambda: forward(params, batch).block_until_ready()
  out = {"rows": rows, "prompt_len": length,
         "compile_s": {"cached": _compile_time(lambda: cached(n)),
                       "cached_first": _compile_time(lambda: cached(1)),
                       "no_cache": _compile_time(slow),
                       "no_cache_first": _compile_time(first_slow)}}
  t_cached, t_slow = _median_time(lambda: cached(n), repeats), _median_time(slow, repeats)
  out.update(
      cached_s=t_cached, no_cache_s=t_slow, speedup=t_slow / t_cached,
      cached_tok_s=rows * n / t_cached, no_cache_tok_s=rows * n / t_slow,
      first_token_cached_ms=1e3 * _median_time(lambda: cached(1), repeats),
      first_token_no_cache_ms=1e3 * _median_time(first_slow, repeats),
      same_ids=bool(np.array_equal(np.asarray(cached(n)), np.asarray(slow()))))
  return out


def hf_race(model_cfg, tok, rows_list, n, repeats, image, weight_scale, threads):
  """Our greedy against HF generate on the torch reference, same weights and
  prompt; per batch size: seconds, tokens/s and equal ids."""
  import jax
  import numpy as np
  import torch
  import transformers
  from benchmarks import torch_reference
  from metalm_jax.evaluate import decode
  from metalm_jax.models import metalm
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  try:
    ref = torch_reference.build_model(model_cfg).eval()
  except ValueError as e:  # a model the reference cannot express
    return {"skipped": str(e)}
  with torch.no_grad():
    for p in ref.parameters():
      if p.ndim >= 2:
        p.mul_(weight_scale)
  lm = torch_reference.lm_head_model(ref)
  model = metalm.build_model(model_cfg)
  params = jax.device_put(torch_reference.our_params(ref, model_cfg))
  out = {"torch": torch.__version__, "transformers": transformers.__version__,
         "torch_threads": torch.get_num_threads(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
         "params": f"torch reference init (seed 0), matmul weights x{weight_scale}, "
                   "converted into ours (torch_reference.our_params)",
         "hf_call": "GPT2LMHeadModel.generate(inputs_embeds=docked prompt, attention_mask, "
                    "do_sample=False, num_beams=1, eos_token_id=None)",
         "batches": []}
  for rows in rows_list:
    batch = prompt_batch(model_cfg, tok, rows, image)
    tb = torch_reference.to_torch_batch(batch, model_cfg)
    ours = lambda b=batch: decode.greedy(model, params, b, max_new_tokens=n, eos_id=None,
                                         pad_id=tok.pad).ids.block_until_ready()
    theirs = lambda b=tb: torch_reference.hf_greedy(ref, lm, b, n)
    ids_ours, ids_hf = np.asarray(ours()), theirs().numpy()  # warm-up (our compile)
    t_ours, t_hf = [], []
    for _ in range(repeats):  # in turn, so both see the same load
      t_ours.append(_median_time(ours, 1))
      t_hf.append(_median_time(theirs, 1))
    s_ours, s_hf = statistics.median(t_ours), statistics.median(t_hf)
    same = ids_ours == ids_hf
    out["batches"].append({
        "rows": rows, "prompt_len": int(batch["tokens"].shape[1]), "new_tokens": n,
        "ours_s": s_ours, "hf_s": s_hf, "ours_tok_s": rows * n / s_ours,
        "hf_tok_s": rows * n / s_hf, "ours_over_hf": s_hf / s_ours,
        "same_ids_frac": float(same.mean()), "rows_identical": int(same.all(1).sum()),
        "distinct_ids_per_row": [len(set(r)) for r in ids_ours.tolist()]})
  return out


def twenty_questions(model_cfg, params, tok, n, buckets, image):
  import jax
  jax.clear_caches()  # so a shape compiled by an earlier run is counted again
  from metalm_jax.convert.predictor import VQA_TEMPLATE, Predictor
  from metalm_jax.evaluate import decode, prompts
  p = Predictor.from_params(model_cfg, params, tok, n, batch_size=8, buckets=buckets)
  qs = [" ".join(QUESTION_WORDS[:k + 1]) + "?" for k in range(20)]
  parts = [[prompts.Image(p.preprocess(image)), prompts.Text(VQA_TEMPLATE.format(question=q))]
           for q in qs]
  lengths = prompts.prompt_lengths(parts, tok, model_cfg)
  out = {"distinct_lengths": len(set(lengths)), "min_len": min(lengths), "max_len": max(lengths)}
  for name, call in (("one_at_a_time", lambda: [p.vqa([image], [q]) for q in qs]),
                     ("batched", lambda: p.vqa([image] * 20, qs))):
    before, t0 = decode.trace_count(), time.perf_counter()
    call()
    out[name] = {"compiles": decode.trace_count() - before, "s": time.perf_counter() - t0}
  return out


def main(argv):
  del argv
  if FLAGS.hf_race and "OMP_WAIT_POLICY" not in os.environ:
    # Torch's OpenMP runtime honours it only from the process environment.
    os.environ["OMP_WAIT_POLICY"] = FLAGS.torch_omp_wait.upper()
    os.execv(sys.executable, [sys.executable] + sys.argv)
  import flax.linen as nn
  import jax
  import numpy as np
  from metalm_jax import provenance
  from metalm_jax.models import metalm
  begun = provenance.start()
  cfg = FLAGS.config.model
  model = metalm.build_model(cfg)
  params = jax.device_put(nn.meta.unbox(metalm.init_variables(model, jax.random.key(0))["params"]))
  tmp = tempfile.mkdtemp(prefix="metalm_decode_bench_")
  tok = make_tokenizer(cfg.decoder.vocab_size, tmp)
  vit = [k for k in sorted(cfg.encoders) if cfg.encoders[k].type == "vit"][0]
  size = cfg.encoders[vit].image_size
  raw = np.random.default_rng(0).integers(0, 256, (size + 7, size - 3, 3), dtype=np.uint8)
  from metalm_jax.media import images
  pixels = images.preprocess_image(raw, size)
  print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
  print(f"model: decoder {cfg.decoder.num_layers}x{cfg.decoder.emb_dim}, vocab "
        f"{cfg.decoder.vocab_size}; {vit} {cfg.encoders[vit].num_layers}x"
        f"{cfg.encoders[vit].emb_dim} at {size} px; dtype {cfg.dtype}")
  n = FLAGS.new_tokens
  result = {"model": {"decoder": f"{cfg.decoder.num_layers}x{cfg.decoder.emb_dim}",
                      "vocab_size": cfg.decoder.vocab_size, "dtype": cfg.dtype,
                      vit: f"{cfg.encoders[vit].num_layers}x{cfg.encoders[vit].emb_dim}",
                      "image_size": size},
            "new_tokens": n, "repeats": FLAGS.repeats, "generation": [], "questions": {}}
  for rows in map(int, FLAGS.batch_sizes):
    r = kv_vs_no_cache(model, params, tok, rows, n, FLAGS.repeats, pixels)
    result["generation"].append(r)
    c = r["compile_s"]
    print(f"batch {rows}, prompt {r['prompt_len']} positions, {n} new tokens:")
    print(f"  KV cache : {r['cached_tok_s']:9.1f} tokens/s ({r['cached_s']:.3f} s), first token "
          f"{r['first_token_cached_ms']:.1f} ms; compile {c['cached']:.1f} s "
          f"(+{c['cached_first']:.1f} s for the 1-token loop)")
    print(f"  no cache : {r['no_cache_tok_s']:9.1f} tokens/s ({r['no_cache_s']:.3f} s), first "
          f"token {r['first_token_no_cache_ms']:.1f} ms; compile {c['no_cache']:.1f} s")
    print(f"  speed-up {r['speedup']:.1f}x (goal >= 5x); same ids: {r['same_ids']}")
  if FLAGS.hf_race:
    race = hf_race(cfg, tok, list(map(int, FLAGS.batch_sizes)), n, FLAGS.repeats, pixels,
                   FLAGS.race_weight_scale, FLAGS.torch_threads)
    result["hf_race"] = race
  if FLAGS.hf_race and "skipped" in race:
    print(f"race against HF generate skipped: {race['skipped']}")
  elif FLAGS.hf_race:
    print(f"race against HF generate (torch {race['torch']}, transformers "
          f"{race['transformers']}, {race['torch_threads']} threads, "
          f"OMP_WAIT_POLICY={race['omp_wait_policy']}), same weights, greedy, {n} new tokens:")
    for r in race["batches"]:
      print(f"  batch {r['rows']}: ours {r['ours_tok_s']:9.1f} tokens/s ({r['ours_s']:.3f} s), "
            f"HF generate {r['hf_tok_s']:9.1f} tokens/s ({r['hf_s']:.3f} s): ours "
            f"{r['ours_over_hf']:.2f}x; equal ids {r['same_ids_frac']:.3f} "
            f"({r['rows_identical']}/{r['rows']} rows identical)")
  runs = [("buckets (default)", None)] + ([("no buckets", ())] if FLAGS.unbucketed else [])
  for name, buckets in runs:
    q = twenty_questions(cfg, params, tok, FLAGS.qa_new_tokens, buckets, raw)
    result["questions"][name] = dict(q, new_tokens=FLAGS.qa_new_tokens)
    print(f"20 questions, {q['distinct_lengths']} prompt lengths ({q['min_len']}..{q['max_len']}),"
          f" {FLAGS.qa_new_tokens} new tokens, {name}: one at a time "
          f"{q['one_at_a_time']['compiles']} compiles ({q['one_at_a_time']['s']:.1f} s); "
          f"batched {q['batched']['compiles']} compiles ({q['batched']['s']:.1f} s)")
  print(f"load average at the end: {os.getloadavg()[0]:.2f}")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, result, begun)


if __name__ == "__main__":
  absl_run.run(main)
