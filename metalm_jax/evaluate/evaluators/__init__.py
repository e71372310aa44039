"""Evaluators: declared in `config.evals`, one module per type over a small
runner (as big_vision's evaluators/), run by the trainer every `every_steps`
and by eval-only runs (`total_steps=0` with `init_from`).

    config.evals.vqa = dict(type="vqa", every_steps=500, source="world_vqa",
                            split="validation", num_examples=64)

Types (modules; other fields and defaults: common.DEFAULTS, `defaults(type)`):
  vqa       image / sound clip / video (or several: the format's inputs) and
            question, generated answer; VQAv2 accuracy.
  caption   image / sound clip / video and prompt, generated caption; BLEU-4,
            CIDEr, METEOR, SPICE.
  classify  label words generated and ranked by log-likelihood (NLI, pairs).
  icl       k demonstrations from the train split, then the query, per k.
  episode   k demonstrations from the query's own record (invented label
            names bound within it), then the query, per k; accuracy and
            the share of the most frequent predicted label.
  loss      the trainer's eval step over the pipeline rows of a split.
Layout:
  common.py    the type registry, Env, Example, `resolve`, result helpers
  examples.py  examples from a source, laid out by the task's format
               (data/formats.py: the same definition as the training rows)
  predict.py   generation and label ranking over the mesh
  runner.py    `run_evals`: the due evaluators, results files

The types are the same for every modality: the source's format says what
is docked (data/formats.py), e.g.

    config.evals.audio_caption = dict(type="caption", source="world_audio_caption")
    config.evals.video_qa = dict(type="vqa", source="world_video_qa")

asks "<audio> Describe this sound:" (the audio_caption format's evaluation
prompt) and "<video> question: ... answer:".

An example follows its source's task format (or the evaluator's `format`);
the `prompt` field, when set, replaces the format's evaluation template
(filled with the record's fields, e.g. "{question}").

Multi-host: evaluators run under the trainer's mesh with its param shardings
(`placement.Placement`; params are never gathered). Every process reads the
same examples; each global batch (`batch_size` rounded up to a multiple of
the batch shards, the last one padded) is split over the mesh's batch axes, so
each process runs only its rows; generated ids, per-row scores and the loss
sums are gathered to every process, which computes the same metrics. An
evaluation over no examples / tokens reports NaN and logs a warning.

Outputs, in <workdir>/evals/ (process 0 only; a workdir may be gs://):
  step_<step>.json          {name: {metric: value}} for the evaluators run
  step_<step>.md            the same as a markdown table
  <name>_step_<step>.jsonl  one line per example: index (the record's: the
                            key pairing two runs), prompt, prediction,
                            references, and the example's scores, whose
                            means are the metrics (evaluate/stats.py):
      classify  label, ranked, correct_rank, correct_generate (= generated_correct)
      vqa       accuracy; majority_accuracy (with num_baseline_examples)
      caption   CIDEr; fixed_CIDEr (with num_baseline_examples)
      icl       per k, k<k>: prompt, prediction, score; label (label formats)
      episode   per k, k<k>: prompt, prediction, score, label
`run_evals` returns {"<name>/<metric>": value} for the trainer's logs.
"""
from metalm_jax.evaluate.evaluators import caption, classify, episode, icl, loss, vqa  # noqa: F401
from metalm_jax.evaluate.evaluators.common import (DEFAULTS, EVALUATORS, Env, Example, defaults,
                                                   mean, resolve)
from metalm_jax.evaluate.evaluators.examples import (format_of, load_examples, make_example,
                                                     train_majority)
from metalm_jax.evaluate.evaluators.episode import episode_prompts, item_format, load_episodes
from metalm_jax.evaluate.evaluators.icl import (demonstrations, items_needed, model_for,
                                                with_max_items)
from metalm_jax.evaluate.evaluators.predict import (clean_label, generate_texts,
                                                    prompt_seq_len, rank_choices)
from metalm_jax.evaluate.evaluators.runner import (markdown_table, read_predictions, run_evals,
                                                    write_results)

__all__ = ["DEFAULTS", "EVALUATORS", "Env", "Example", "clean_label", "defaults", "demonstrations",
           "episode_prompts", "format_of", "generate_texts", "item_format", "items_needed",
           "load_episodes", "load_examples", "make_example", "markdown_table", "mean",
           "model_for", "prompt_seq_len", "rank_choices", "read_predictions", "resolve",
           "run_evals", "train_majority", "with_max_items", "write_results"]
