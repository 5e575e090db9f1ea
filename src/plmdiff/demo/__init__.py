"""The demo's checkpoints, built by the workflow itself (rules/demo.smk).

A small GPT-2 learns the shipped gamma carbonic anhydrase family in ZymCTRL's text format
(`base_model`), then rounds of DPO move it toward a sequence-level reward (`reward`, `dpo`),
and `summary` measures whether they did. Each round is saved as `output_iteration{i}/`, the
layout of a ZymCTRL user's checkpoints, so every later stage reads the demo as it would a study.
"""
