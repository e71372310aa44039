"""Evaluation: decoding (decode), likelihood scoring (scoring), task metrics
(metrics), prompt builders (prompts), multi-host placement (placement),
paired bootstrap intervals over per-example scores (stats) and the
evaluators package (evaluators/: one module per type over a runner)."""
