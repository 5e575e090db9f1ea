"""Helpers of the sampling tests: settings from the schema's defaults, draws, a model that never ends."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from plmdiff.config.sections import section_defaults
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.settings import SamplingSettings
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

DEFAULTS = SamplingSettings.from_section(section_defaults("sampling"))


def sampling_settings(**changes) -> SamplingSettings:
    """The schema's sampling settings with `changes`."""
    return replace(DEFAULTS, **changes)


SETTINGS = sampling_settings(max_length=80, batch_size=16)


def draw(model_tok, indices, settings=SETTINGS, seed=7):
    model, tok = model_tok
    return sample_sequences(model, tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS, indices, settings, seed, "cpu")


def never_ending(model):
    """A copy that cannot emit <end>: one final-norm channel is pinned to 1 and the <end>
    row of the (tied) output embedding reads only that channel, with a huge negative weight."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 1.0
        row = model.lm_head.weight[ZYMCTRL_IDS.end]
        row.zero_()
        row[0] = -1e4
    return model
