"""The paper's claims in miniature (benchmarks/claims.py): the protocol, fixed
before the run, and one config per stage.

    python benchmarks/claims.py --workdir=/tmp/claims [--quick]
    python -m metalm_jax.main --config=configs/experiments/claims.py:stage=vl_pretrain \
        --workdir=/tmp/claims/vl_pretrain/base
    python -m metalm_jax.main \
        --config=configs/experiments/claims.py:stage=vqa_ft,init=/tmp/claims/vl_pretrain/base,\
blank=1 \
        --workdir=/tmp/claims/vqa_ft_blind/seed=0

arg keys: stage (STAGES below), init (the workdir the stage starts from),
steps (0 = the stage's default), blank (every image blanked in training and
evaluation: `data.image_std` = 1e9 maps each normalised pixel to ~1e-9, the
constant mean-colour image), examples (evaluation examples; 0 = EXAMPLES).

The protocol (ROWS below; docs/claims.md reads each):
- MetaLM and its baseline get the same pretraining tokens (lang_metalm and
  lang_gpt read the same mixture for the same steps and batch) and the same
  finetuning budget (same steps, batch, lr, schedule, seeds 0..S-1).
- The language encoder is a bidirectional model pretrained with the decoder:
  every encoder layer trains during semi-causal pretraining (the paper starts
  from a pretrained ELECTRA; we have none, and training all of it with the
  decoder is the cheapest way to a pretrained encoder; a separate masked-LM
  stage would cost another run), spans of SPAN_LEN tokens, as long as the NLI
  finetuning input (premise + hypothesis, 20-40 tokens) on one item of
  LANG_ENC_LEN positions.
- Language pretraining text: world documents (which use the prompt and label
  words true / false / neither / question / answer / only in ordinary
  sentences, never an NLI example) and binding episodes in text.
- Zero-shot rows are scored on a VL model whose pretraining saw image
  captions (no prompt; a few web-page words or none between image and
  caption, CAPTION_CONTEXTS), documents and binding episodes, never a VQA
  item or a caption prompt (ZERO_SHOT_VL_MIXTURE; tests/test_claims_data.py
  checks that none leaks).
- In-context rows: the binding episode (invented names per prompt: the
  demonstrations carry the name the query needs) in images and in text, VQA
  in context as the paper, and VQA in context after finetuning with the
  decoder frozen (the paper's interface). k = 4 stays within what pretraining
  docked (5 images in a VL row, 5 text items in a language row; tested). In
  language pretraining each episode phrase is docked with chance
  EPISODE_DOCKED (semi-causal spans cover part of the text); evaluation docks
  every one.
- Multitask tuning: three text clusters (question answering over
  descriptions, counting, attribute lookup) tuned, the NLI cluster held out
  and evaluated zero-shot, MetaLM and the GPT tuned identically.
- Each row: MetaLM - baseline with a 95% paired bootstrap interval over
  evaluation examples, pooled over the finetuning seeds; it holds only when
  the interval lies above 0 and MetaLM does not give one answer to more than
  90% of the examples. VL pretraining has one seed (its 1200 steps are the
  budget's largest part); stated in each VL row's `seeds`.

One device (mesh 1x1x1), peak FLOPs given (no start-up matmul measurement).
"""
from __future__ import annotations

import ml_collections as mlc

from configs import common
from configs import finetune_common as F
from configs import finetune_nli, finetune_vqa, pretrain_lang, pretrain_vl
from metalm_jax import presets

VL_SEQ_LEN = 192          # a binding episode or k = 4 VQA prompt: 5 images (~170 positions)
VL_IMAGES = 5             # images a VL pretraining row docks (k = 4 demonstrations + query)
LANG_ITEMS = 5            # text-encoder items a language row docks (episodes: 4 demos + query)
LANG_ENC_LEN = 64         # text-encoder positions per item (NLI premise + hypothesis fit)
SPAN_LEN = (16, 48)       # semi-causal span lengths in language pretraining
ICL_SHOTS = (0, 1, 2, 4)
BLANK_STD = (1e9, 1e9, 1e9)
EXAMPLES = 300            # evaluation examples per evaluator (the world's validation split)
QUICK_EXAMPLES = 48
ZERO_SHOT_VL_MIXTURE = {"world_caption": 0.5, "world_text": 0.25, "world_bind": 0.25}
LANG_MIXTURE = {"world_text": 0.75, "world_bind_text": 0.25}
# Semi-causal pretraining docks a text episode's phrase with this chance
# (else plain tokens: data.spans.episode_docked); evaluation docks every one.
EPISODE_DOCKED = 0.5
# Words around an image on a web page: one (or none) drawn per caption row
# between the image and its caption (data.caption_contexts). None is a
# caption prompt or template, or names the image (tests/test_claims_data.py).
CAPTION_CONTEXTS = ("", "photo:", "new upload:", "from the album:", "look at this.",
                    "see below.", "attached:", "seen today:", "snapshot:", "view:",
                    "posted by a user:", "file 12:")
MULTITASK_MIXTURE = {"world_text_qa": 1.0, "world_count": 1.0, "world_attribute": 1.0}


def _one_device(c):
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.metrics.peak_flops = 1e12
  return c


def _ev(type_: str, source: str, every: int, a, **kw) -> dict:
  return F.evaluator(type_, source, every, num_examples=a.examples or EXAMPLES, **kw)


# ---- language-only ---------------------------------------------------------------
def _lang(a, baseline: str = ""):
  c = pretrain_lang.get_config(f"size=tiny,steps={a.steps}"
                               + (f",baseline={baseline}" if baseline else ""))
  c.data.mixture = dict(LANG_MIXTURE)
  c.data.spans.min_len, c.data.spans.max_len = SPAN_LEN
  if not baseline:
    text = c.model.encoders.text
    text.max_len, text.max_items = LANG_ENC_LEN, LANG_ITEMS
    c.optimizer.encoder_top_layers = {"text": -1}  # every layer trains: the encoder is pretrained
    c.data.spans.episode_docked = EPISODE_DOCKED
  c.evals = {"icl": _ev("episode", "world_bind_text", c.total_steps, a, shots=ICL_SHOTS)}
  return c


def lang_metalm(a):
  """Language-only MetaLM, semi-causal LM on LANG_MIXTURE."""
  return _lang(a)


def lang_gpt(a):
  """The same-size GPT on the same text (presets.gpt_baseline: same decoder,
  same token stream, nothing docked)."""
  return _lang(a, "gpt")


def _lang_model():
  return _lang(mlc.ConfigDict(dict(steps=0, examples=0))).model


def nli_metalm(a):
  """World NLI, premise + hypothesis on one text-encoder item, decoder frozen:
  encoder + connector train (the paper's MNLI setting)."""
  c = finetune_nli.get_config(f"size=tiny,steps={a.steps},init={a.init}")
  c.model = _lang_model()
  c.optimizer.groups = {"frozen": F.frozen("decoder")}
  c.evals = {"nli": _ev("classify", "world_nli_encoded", c.total_steps, a)}
  return c


def nli_gpt(a):
  """World NLI as plain text ("the picture shows ... question: ... true,
  false or neither? answer:"), the GPT finetuned in full, same budget."""
  c = finetune_nli.get_config(f"size=tiny,steps={a.steps},init={a.init}")
  c.model = presets.gpt_baseline(_lang_model())
  c.data = presets.gpt_baseline_data(c.data)
  c.data.mixture = {"world_nli": 1.0}
  c.optimizer.groups = {}
  c.evals = {"nli": _ev("classify", "world_nli", c.total_steps, a)}
  return c


def _multitask(a, model, data_fn):
  tiny = mlc.ConfigDict(dict(size="tiny", steps=a.steps, init=a.init))
  c = F.base(tiny, mlc.ConfigDict(dict(model="tiny", data="tiny")),
             {"batch_size": 16, "total_steps": 300, "optimizer.lr": 5e-4,
              "optimizer.warmup_steps": 20, "optimizer.decay": "linear",
              "eval_loss.every_steps": 300, "checkpoint.every_steps": 300},
             kind="lang", mixture=MULTITASK_MIXTURE)
  c.model = model
  c.data = data_fn(c.data)
  c.data.mixture = dict(MULTITASK_MIXTURE)
  c.evals = {"heldout_nli": _ev("classify", "world_nli", c.total_steps, a)}
  return c


def mt_metalm(a):
  """Multitask tuning of language-only MetaLM on MULTITASK_MIXTURE (all
  weights train); the NLI cluster held out, evaluated zero-shot (ranked)."""
  return _multitask(a, _lang_model(), lambda d: d)


def mt_gpt(a):
  return _multitask(a, presets.gpt_baseline(_lang_model()), presets.gpt_baseline_data)


# ---- vision-language --------------------------------------------------------------
def _vl(c):
  c.data.seq_len = VL_SEQ_LEN
  c.data.max_doc_tokens = 8 * VL_SEQ_LEN
  c.model.encoders.vision.max_items = VL_IMAGES
  return c


# Warm-up of VL pretraining here: 150 steps, not the tiny recipe's 30: with 30
# the from-scratch ViT's grounding by step 1200 depended on the seed
# (measured on world 1.2.0; the runs are in git history).
VL_WARMUP = 150


def vl_pretrain(a):
  """VL semi-causal pretraining on ZERO_SHOT_VL_MIXTURE: no VQA item, no
  caption prompt, no instruction text."""
  c = _vl(pretrain_vl.get_config(f"size=tiny,steps={a.steps or 1200}"))
  c.optimizer.warmup_steps = VL_WARMUP
  c.data.mixture = dict(ZERO_SHOT_VL_MIXTURE)
  c.data.caption_contexts = list(CAPTION_CONTEXTS)
  c.evals = {}
  return c


def _vqa_icl(a, every: int) -> dict:
  return _ev("icl", "world_vqa", every, a, shots=ICL_SHOTS)


def vl_zeroshot(a):
  """Eval-only on the pretrained VL model: zero-shot captions and VQA, each
  also with every image blanked (the same model and prompts), the binding
  episode and VQA in context at k = 0, 1, 2, 4."""
  c = _vl(pretrain_vl.get_config("size=tiny"))
  c.data.mixture = dict(ZERO_SHOT_VL_MIXTURE)
  c.total_steps, c.init_from = 0, a.init
  cap = dict(max_new_tokens=24)
  c.evals = {"caption": _ev("caption", "world_caption", 1, a, **cap),
             "caption_blind": _ev("caption", "world_caption", 1, a, blind=True, **cap),
             "vqa": _ev("vqa", "world_vqa", 1, a),
             "vqa_blind": _ev("vqa", "world_vqa", 1, a, blind=True),
             "bind": _ev("episode", "world_bind", 1, a, shots=ICL_SHOTS),
             "icl": _vqa_icl(a, 1)}
  return c


def vqa_ft(a):
  """VQA finetuning with the decoder frozen (the paper's interface): the
  vision encoder and its connector train; then VQA and VQA in context."""
  c = finetune_vqa.get_config(f"size=tiny,steps={a.steps},init={a.init}")
  # Rows of one image: the finetuning keeps the tiny recipe's row length and
  # one vision item; the in-context evaluator docks up to 5 (icl.with_max_items).
  c.optimizer.groups = {"frozen": F.frozen("decoder", "encoders_text", "connectors_text")}
  c.evals = {"vqa": _ev("vqa", "world_vqa", c.total_steps, a)}
  if not a.blank:
    c.evals.icl = _vqa_icl(a, c.total_steps)
  return c


# ---- experiments that explain rows (eval-only, after the rows' stages) ----------------
def explain_vl(a):
  """The pretrained VL model captioning with no prompt at all (the layout of
  its caption pretraining rows), with and without the image: is the image
  grounded when the unseen prompt is left out?"""
  c = vl_zeroshot(a)
  cap = dict(max_new_tokens=24, prompt="")
  c.evals = {"caption_noprompt": _ev("caption", "world_caption", 1, a, **cap),
             "caption_noprompt_blind": _ev("caption", "world_caption", 1, a, blind=True,
                                           **cap)}
  return c


def explain_lang(a):
  """Language-only MetaLM's text binding episodes with the phrases as plain
  tokens to the decoder (nothing docked): can its decoder bind at all?"""
  c = _lang(a)
  c.total_steps, c.init_from = 0, a.init
  c.data.spans.encoder = ""
  return c


# stage -> builder(parsed arg) -> ConfigDict
STAGES = {f.__name__: f for f in (lang_metalm, lang_gpt, nli_metalm, nli_gpt, mt_metalm,
                                   mt_gpt, vl_pretrain, vl_zeroshot, vqa_ft, explain_vl,
                                   explain_lang)}


# ---- the protocol: one row per claim, fixed before the run ---------------------------
def _ref(stage: str, evaluator: str, column: str) -> dict:
  """Per-example values: column `column` of evaluator `evaluator`'s
  predictions rows in each run of `stage` ("k4.score": nested)."""
  return dict(stage=stage, evaluator=evaluator, column=column)


def _row(name, paper, what, model, trains, metalm, baseline, baseline_what, evalset,
         prediction=None):
  return dict(name=name, paper=paper, what=what, model=model, trains=trains, metalm=metalm,
              baseline=baseline, baseline_what=baseline_what, eval=evalset,
              prediction=prediction)


_NLI_EVAL = f"world NLI validation, first {EXAMPLES} pairs"
_VQA_EVAL = f"world VQA validation, first {EXAMPLES} images, VQAv2 accuracy"
_CAP_EVAL = f"world captions validation, first {EXAMPLES} images, CIDEr per image"
_LANG_MODEL = "language-only MetaLM (decoder 2x64, text encoder 2x64, pretrained together)"
_VL_MODEL = "VL MetaLM (decoder 2x64, ViT 2x64), pretrained on captions, documents, episodes"
_FROZEN_DEC = "vision encoder + connector; decoder frozen"


def _icl_row(name, stage, ev, hi, lo, what, model, trains, evalset):
  return _row(name, "section 4.3 / 5.3: in-context learning improves with shots",
              f"{what}: k={hi} vs k={lo}", model, trains,
              _ref(stage, ev, f"k{hi}.score"), _ref(stage, ev, f"k{lo}.score"),
              f"the same model, k={lo}", evalset, prediction=f"k{hi}.prediction")


_ZERO_SHOT = {  # evaluator -> (the paper's row, what is measured, evaluation set)
    "caption": ("section 5.1 Table 6: zero-shot captioning (COCO CIDEr 82.2)",
                "zero-shot caption CIDEr ('Summarize this image:')", _CAP_EVAL),
    "vqa": ("section 5.1 Table 6: zero-shot VQAv2 41.1 (Frozen 29.5)",
            "zero-shot VQA accuracy ('question: ... answer:')", _VQA_EVAL)}


def _zero_shot(name, ev, column, base_ev, base_column, baseline_what):
  """A zero-shot row of the pretrained VL model (stage vl_zeroshot)."""
  paper, what, evalset = _ZERO_SHOT[ev]
  return _row(name, paper, what, _VL_MODEL, "pretraining only",
              _ref("vl_zeroshot", ev, column), _ref("vl_zeroshot", base_ev, base_column),
              baseline_what, evalset, prediction="prediction")


ROWS = (
    _row("nli_rank", "section 4.2 Table 3: MNLI, decoder frozen (91.1 vs GPT 87.7)",
         "world NLI accuracy, label ranked by likelihood", _LANG_MODEL,
         "text encoder + connector; decoder frozen",
         _ref("nli_metalm", "nli", "correct_rank"), _ref("nli_gpt", "nli", "correct_rank"),
         "the same-size GPT, pretrained on the same text, finetuned in full, same budget",
         _NLI_EVAL, prediction="ranked"),
    _row("nli_generate", "section 4.2 Table 3: MNLI, decoder frozen (91.1 vs GPT 87.7)",
         "world NLI accuracy, label generated", _LANG_MODEL,
         "text encoder + connector; decoder frozen",
         _ref("nli_metalm", "nli", "correct_generate"),
         _ref("nli_gpt", "nli", "correct_generate"),
         "the same-size GPT, pretrained on the same text, finetuned in full, same budget",
         _NLI_EVAL, prediction="prediction"),
    _row("heldout_nli",
         "section 4.1 Table 1: multitask tuning, held-out cluster (NLI 79.1 vs 65.0)",
         "held-out NLI accuracy (ranked) after tuning on QA, counting and attribute clusters",
         _LANG_MODEL, "all weights", _ref("mt_metalm", "heldout_nli", "correct_rank"),
         _ref("mt_gpt", "heldout_nli", "correct_rank"), "the same-size GPT, tuned identically",
         _NLI_EVAL, prediction="ranked"),
    _icl_row("icl_lang_bind_k4_vs_k0", "lang_metalm", "icl", 4, 0,
             "binding episodes in text (invented names), ranked", _LANG_MODEL, "pretraining only",
             f"{EXAMPLES} validation episodes, 8 names ranked"),
    _row("icl_lang_bind_k4_vs_gpt", "section 4.3 Table 5: in-context learning vs GPT",
         "binding episodes in text at k=4: MetaLM vs GPT", _LANG_MODEL, "pretraining only",
         _ref("lang_metalm", "icl", "k4.score"), _ref("lang_gpt", "icl", "k4.score"),
         "the same-size GPT, pretrained on the same text", f"{EXAMPLES} validation episodes",
         prediction="k4.prediction"),
    _icl_row("icl_vl_bind_k4_vs_k0", "vl_zeroshot", "bind", 4, 0,
             "binding episodes in images (invented names), ranked", _VL_MODEL, "pretraining only",
             f"{EXAMPLES} validation episodes, 8 names ranked"),
    _icl_row("icl_vqa_pretrained_k4_vs_k0", "vl_zeroshot", "icl", 4, 0, "VQA in context",
             _VL_MODEL, "pretraining only", _VQA_EVAL),
    _icl_row("icl_vqa_finetuned_k4_vs_k0", "vqa_ft", "icl", 4, 0,
             "VQA in context after VQA finetuning", _VL_MODEL, _FROZEN_DEC, _VQA_EVAL),
    _zero_shot("caption_vs_blind", "caption", "CIDEr", "caption_blind", "CIDEr",
               "the same model and prompt, every image blanked"),
    _zero_shot("caption_vs_fixed", "caption", "CIDEr", "caption", "fixed_CIDEr",
               "the most frequent training caption for every image"),
    _zero_shot("vqa_zeroshot_vs_blind", "vqa", "accuracy", "vqa_blind", "accuracy",
               "the same model and prompt, every image blanked"),
    _zero_shot("vqa_zeroshot_vs_majority", "vqa", "accuracy", "vqa", "majority_accuracy",
               "the most frequent training answer for every question"),
    _row("vqa_ft_vs_blind", "section 5.2 Table 8: VL finetuning (VQAv2)",
         "finetuned VQA accuracy", _VL_MODEL, _FROZEN_DEC,
         _ref("vqa_ft", "vqa", "accuracy"), _ref("vqa_ft_blind", "vqa", "accuracy"),
         "the same finetuning with every image blanked (training and evaluation)", _VQA_EVAL,
         prediction="prediction"),
)

# Experiments that read rows which may not hold (claims.json "explanations"),
# fixed with the protocol; each is a record like a row.
EXPLANATIONS = (
    _row("caption_noprompt_vs_blind", "explains caption_* and vqa_zeroshot_*",
         "caption CIDEr with no prompt (as in caption pretraining)", _VL_MODEL,
         "pretraining only", _ref("explain_vl", "caption_noprompt", "CIDEr"),
         _ref("explain_vl", "caption_noprompt_blind", "CIDEr"),
         "the same model, no prompt, every image blanked", _CAP_EVAL, prediction="prediction"),
    _icl_row("icl_lang_plain_k4_vs_k0", "explain_lang", "icl", 4, 0,
             "language-only MetaLM's decoder on text episodes as plain tokens",
             _LANG_MODEL, "pretraining only", f"{EXAMPLES} validation episodes, 8 names ranked"),
)

# The in-context curves of the figure: label -> (stage, evaluator).
ICL_CURVES = {"text episodes, MetaLM": ("lang_metalm", "icl"),
              "text episodes, GPT": ("lang_gpt", "icl"),
              "text episodes, MetaLM's decoder, plain text": ("explain_lang", "icl"),
              "image episodes": ("vl_zeroshot", "bind"),
              "VQA, pretrained": ("vl_zeroshot", "icl"),
              "VQA, finetuned (decoder frozen)": ("vqa_ft", "icl")}


def get_config(arg=None):
  a = common.parse_arg(arg, stage="", init="", steps=0, blank=False, examples=0)
  if a.stage not in STAGES:
    raise ValueError(f"config arg stage={a.stage!r} is unknown; known: {sorted(STAGES)}")
  c = _one_device(STAGES[a.stage](a))
  if a.blank:
    c.data.image_std = BLANK_STD
  return c
