"""Evaluation: decoding (decode), likelihood scoring (scoring), task metrics
(metrics), prompt builders (prompts), multi-host placement (placement) and
the evaluators package (evaluators/: one module per type over a runner)."""
