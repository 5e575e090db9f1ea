"""What a diff family compares: one SAE encodes every round; scheme names from config.paths."""

from __future__ import annotations

import pytest

from plmdiff.config.paths import finetune_scheme, pooled_scheme
from plmdiff.core.errors import DataError
from plmdiff.diff.analyses import family_analyses

MODELS = ["r0", "r1", "r2"]


def test_family_analyses():
    (base,) = family_analyses("base", ["base"], MODELS)
    assert base.evaluator == {"r0": "base", "r1": "base", "r2": "base"} and not base.direction
    assert not base.is_pooled
    (pm,) = family_analyses("per_model", ["base", "ft_r1", "ft_r2"], MODELS)
    # one SAE (the last round's) encodes every round; each round's decoder change is reported
    assert pm.evaluator == {"r0": "ft_r2", "r1": "ft_r2", "r2": "ft_r2"} and pm.reference == "base"
    assert pm.direction == {"r1": "ft_r1", "r2": "ft_r2"}
    assert pm.schemes == ["ft_r2", "base", "ft_r1"] and not pm.is_pooled
    pooled = family_analyses("pooled", ["base", "pooled_early", "pooled_late"], MODELS)
    assert [a.name for a in pooled] == ["pooled_early", "pooled_late"]
    assert pooled[0].schemes == ["pooled_early"] and pooled[0].is_pooled
    assert pooled[0].direction == {"pooled_early": "pooled_early"}


def test_scheme_names_come_from_config_paths():
    schemes = ["base", *(finetune_scheme(m) for m in MODELS[1:]), pooled_scheme()]
    (pm,) = family_analyses("per_model", schemes, MODELS)
    assert set(pm.evaluator.values()) == {finetune_scheme("r2")}
    (pooled,) = family_analyses("pooled", schemes, MODELS)
    assert pooled.name == pooled_scheme() and pooled.is_pooled


def test_bad_families_are_named():
    with pytest.raises(DataError, match="fine-tuned SAE of r2"):
        family_analyses("per_model", ["base", "ft_r1"], MODELS)
    with pytest.raises(DataError, match="family pooled has no pooled SAE scheme"):
        family_analyses("pooled", ["base", "ft_r1"], MODELS)
    with pytest.raises(DataError, match="unknown diff family 'nope'; accepted: base, per_model"):
        family_analyses("nope", ["base"], MODELS[:2])
