"""What a diff family compares: which SAE scheme encodes each round, and which decoders move.

Scheme and family names come from `plmdiff.config.paths`, where the rules take them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from plmdiff.config.paths import (
    BASE_FAMILY,
    BASE_SCHEME,
    PER_MODEL_FAMILY,
    POOLED_FAMILY,
    finetune_scheme,
    is_pooled_scheme,
)
from plmdiff.core.errors import DataError

FAMILIES = (BASE_FAMILY, PER_MODEL_FAMILY, POOLED_FAMILY)


@dataclass(frozen=True)
class Analysis:
    """One comparison inside a diff family: which SAE scheme encodes each model's sequences.

    `reference` is the scheme whose decoders identify features across fold replicas (fine-tuned
    SAEs keep their base SAE's indices, so per_model is aligned through the base SAE).
    `direction` maps a label to the fine-tuned scheme whose decoder change it reports.
    """

    name: str
    evaluator: dict[str, str]
    reference: str
    direction: dict[str, str] = field(default_factory=dict)

    @property
    def schemes(self) -> list[str]:
        return list(
            dict.fromkeys([*self.evaluator.values(), self.reference, *self.direction.values()])
        )

    @property
    def is_pooled(self) -> bool:
        """A pooled SAE's analysis (named after its scheme): compared with the ft union."""
        return is_pooled_scheme(self.name)


def family_analyses(family: str, schemes: Sequence[str], models: Sequence[str]) -> list[Analysis]:
    """What a family compares. Every round is encoded by ONE SAE, so that a frequency change
    is a change in the data, never a difference between SAEs (fine-tuning alone shifts firing
    rates): base: the base SAE; per_model: the SAE fine-tuned on the last round, with the
    decoder change of every round's fine-tuned SAE; pooled: each pooled SAE."""
    rounds = list(models[1:])
    if family == BASE_FAMILY:
        return [Analysis(BASE_FAMILY, dict.fromkeys(models, BASE_SCHEME), BASE_SCHEME)]
    if family == PER_MODEL_FAMILY:
        missing = [m for m in rounds if finetune_scheme(m) not in schemes]
        if missing:
            raise DataError(
                f"family {PER_MODEL_FAMILY} lacks the fine-tuned SAE of {', '.join(missing)}"
            )
        last = finetune_scheme(rounds[-1])
        direction = {m: finetune_scheme(m) for m in rounds}
        return [Analysis(PER_MODEL_FAMILY, dict.fromkeys(models, last), BASE_SCHEME, direction)]
    if family == POOLED_FAMILY:
        pooled = [s for s in schemes if is_pooled_scheme(s)]
        if not pooled:
            raise DataError(f"family {POOLED_FAMILY} has no pooled SAE scheme")
        return [Analysis(s, dict.fromkeys(models, s), s, {s: s}) for s in pooled]
    raise DataError(f"unknown diff family '{family}'; accepted: {', '.join(FAMILIES)}")
