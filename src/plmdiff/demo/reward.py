"""The demo's reward: a sequence-only activity proxy for gamma carbonic anhydrases + a length term.

Proxy. Gamma carbonic anhydrases (Cam of Methanosarcina thermophila and its family) fold as a
left-handed beta-helix (LbetaH): a trimer of beta-helices whose coils are built of tandem
hexapeptide repeats matching [LIV]-[GAED]-x(2)-[STAV]-x (PROSITE PS00101, the "hexapeptide
transferase" signature). The zinc-binding histidines and the CO2 site sit on those coils at the
subunit interfaces, so a sequence that loses the repeat loses the scaffold of the active site.
The proxy is the *hexapeptide density*: PS00101 matches (overlapping ones included) per residue,
divided by the family's mean density, so 1.0 means "as repeat-rich as the family" and the term
weighs as much as the length term (ProtRL's TM-score and length term are both 0..1). On the
shipped family (1,252 sequences) the density is 0.051 on average (5-95%: 0.025-0.074); the same
sequences shuffled score 0.025 (0.008-0.047), and density separates the two with an AUC of 0.91.
It is a fold-signature proxy, necessary rather than sufficient for activity, and a model pushed
far enough could game it with bare repeats: a demo device, not an activity predictor.

Reported beside it, not rewarded: the *beta-helix repeat coverage*, the fraction of residues in
in-register tandem matches (a match whose neighbour six residues away also matches: consecutive
coils of one helix face). It is stricter (family median 0.14, shuffled 0.00, AUC 0.96) but
sparse: most samples of a small model score exactly 0, which gives DPO too few distinct
preferences to learn from in a few rounds.

Length term. ProtRL's `exp(-((len/target - 1)^2)/0.25)`: 1 at the target length, ~0.37 at
+-50%, so DPO cannot gain reward by growing or shrinking sequences without bound.

A sample that did not end (truncated at the length limit), is empty or holds non-canonical
letters is not a protein one could express: its reward is 0, the minimum of both terms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from plmdiff.core.errors import DataError
from plmdiff.models.text import is_canonical

# PROSITE PS00101 as a lookahead, so that overlapping matches are all found.
HEXAPEPTIDE = re.compile(r"(?=[LIV][GAED]..[STAV].)")
HEXAPEPTIDE_LENGTH = 6
# Width of ProtRL's length term: exp(-((len/target - 1)^2) / LENGTH_WIDTH).
LENGTH_WIDTH = 0.25


def hexapeptide_starts(sequence: str) -> list[int]:
    """0-based start of every (possibly overlapping) [LIV]-[GAED]-x(2)-[STAV]-x match."""
    return [m.start() for m in HEXAPEPTIDE.finditer(sequence.upper())]


def hexapeptide_density(sequence: str) -> float:
    """PS00101 matches per residue (0 for an empty string)."""
    return len(hexapeptide_starts(sequence)) / len(sequence) if sequence else 0.0


def beta_helix_coverage(sequence: str) -> float:
    """Fraction of residues inside in-register tandem hexapeptide repeats (0 for an empty string)."""
    if not sequence:
        return 0.0
    starts = set(hexapeptide_starts(sequence))
    covered = np.zeros(len(sequence), dtype=bool)
    for s in starts:
        if s + HEXAPEPTIDE_LENGTH in starts or s - HEXAPEPTIDE_LENGTH in starts:
            covered[s : s + HEXAPEPTIDE_LENGTH] = True
    return float(covered.mean())


def length_term(length: int, target: float) -> float:
    """ProtRL's length reward: exp(-((length/target - 1)^2)/0.25), in (0, 1]."""
    if target <= 0:
        raise ValueError(f"length target must be positive, got {target}")
    return math.exp(-((length / target - 1.0) ** 2) / LENGTH_WIDTH)


def median_length(sequences: Sequence[str]) -> float:
    """The default length target: the family's median length."""
    if not sequences:
        raise ValueError("no sequences to take a median length from")
    return float(np.median([len(s) for s in sequences]))


@dataclass(frozen=True)
class RewardSpec:
    """What a reward is measured against: the length target and the family's mean density."""

    length_target: float
    family_density: float

    @classmethod
    def from_family(
        cls, sequences: Sequence[str], length_target: float | None = None
    ) -> RewardSpec:
        density = float(np.mean([hexapeptide_density(s) for s in sequences])) if sequences else 0
        if not density > 0:
            raise DataError(
                "the demo family holds no [LIV]-[GAED]-x(2)-[STAV]-x hexapeptide, so the "
                "proxy cannot be scaled to it; demo.family_fasta must hold left-handed "
                "beta-helix proteins such as the shipped gamma carbonic anhydrases"
            )
        target = median_length(sequences) if length_target is None else float(length_target)
        return cls(length_target=target, family_density=density)


@dataclass(frozen=True)
class Score:
    """One sample's reward and its parts; `valid` is False for truncated, empty or
    non-canonical samples, whose reward is 0. `proxy` is the hexapeptide density relative to
    the family's (the reward's activity term); `coverage` the beta-helix repeat coverage."""

    valid: bool
    density: float
    proxy: float
    coverage: float
    length_term: float
    reward: float


def score_sequence(sequence: str, ended: bool, spec: RewardSpec) -> Score:
    """Reward = density / family density + length term, or 0 for an invalid sample.

    The parts of an invalid sample are still reported (nan for an empty one) so that a table
    shows why it scored 0.
    """
    density = hexapeptide_density(sequence) if sequence else math.nan
    proxy = density / spec.family_density
    length = length_term(len(sequence), spec.length_target)
    valid = ended and is_canonical(sequence)
    return Score(
        valid=valid,
        density=density,
        proxy=proxy,
        coverage=beta_helix_coverage(sequence) if sequence else math.nan,
        length_term=length,
        reward=proxy + length if valid else 0.0,
    )
