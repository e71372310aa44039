"""Evaluation: decoding (decode), likelihood scoring (scoring), task metrics
(metrics) and prompt builders (prompts)."""
