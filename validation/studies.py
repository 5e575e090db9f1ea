"""Studies with a known answer: what each round is fine-tuned on, and what the diff should find.

Every transform keeps the family's sequences and changes one thing, with a rate per round:
- `plant_motif`: a motif overwrites a random window (or one fixed residue) in a share of the
  sequences (the planted positions are the motif's occurrences); `plant_at_column`: at a
  homologous site, the residues aligned to given columns of the family's Potts profile;
- `enrich_class`: a share of residues is replaced by residues of one class (the planted
  positions are that class's residues);
- `shorten`: sequences are cut shorter (nothing residue-level is planted: a length effect);
- null: every round is a copy of the base checkpoint, so rounds differ only by sampling seed.
With `on_base_samples` a null's or a length shift's rounds are the base fine-tuned, with their
own seed, on sequences the base sampled itself (shortened, for a length shift) rather than on the
family: a null whose models differ by a fine-tune that planted nothing, which is what a
model-diffing null needs (copies of the base make every latent shared by construction), and a
length shift that changes only the length (rounds trained on the family also move their
residues toward it: VALIDATION.md "Full suite with trained SAEs", the length study).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pyhmmer import plan7

from plmdiff.config.sections import section_defaults
from plmdiff.potts.align import hmmalign_rows, match_columns
from plmdiff.potts.job import unaligned_profile
from plmdiff.potts.settings import PottsConfig
from validation import potts_scoring
from validation.checkpoints import Architecture, ModelShape

Kind = Literal["motif", "composition", "length", "null"]


def plant_motif(
    sequences: Sequence[str], motif: str, share: float, seed: int, start: int | None = None
) -> list[str]:
    """Overwrite a window of `share` of the sequences with `motif` (length kept): a random
    window, or the one at 0-based residue `start` (a site, as in a real family)."""
    rng = random.Random(seed)
    out = []
    for seq in sequences:
        if len(seq) > len(motif) and rng.random() < share:
            at = rng.randrange(0, len(seq) - len(motif) + 1) if start is None else start
            seq = seq[:at] + motif + seq[at + len(motif) :]
        out.append(seq)
    return out


def site_start(row: str, sequence: str, column: int, length: int) -> int | None:
    """The 0-based residue of `sequence` aligned to profile match column `column` (1-based),
    when its hmmalign row (plmdiff.potts.align.hmmalign_rows) has a residue in each of the
    match columns column .. column + length - 1 and no insertion between them; else None."""
    residues = "".join(ch for ch in row if ch.isalpha()).upper()
    # hmmalign trims the unaligned ends: the row's residues are one stretch of the sequence.
    if not residues:
        return None
    at = sequence.upper().find(residues)
    if at < 0:
        raise ValueError(f"the row {row!r} is not an alignment of {sequence!r}")
    aligned: list[int | None] = []
    for ch in row:
        if ch.isupper():
            aligned.append(at)
        elif ch == "-":
            aligned.append(None)
        at += ch.isalpha()
    window = aligned[column - 1 : column - 1 + length]
    first = window[0] if len(window) == length else None
    # Consecutive residues: no deletion in the window and no insertion between its columns.
    return first if first is not None and window == list(range(first, first + length)) else None


def plant_at_column(
    sequences: Sequence[str],
    rows: Sequence[str],
    motif: str,
    share: float,
    seed: int,
    column: int,
    study: str,
) -> list[str]:
    """Overwrite, in round(share x all sequences) of them (a seeded choice among the eligible
    ones, see `site_start`), the residues aligned to profile columns column .. column +
    len(motif) - 1 with `motif`; `rows` are the sequences' hmmalign rows."""
    width = len(match_columns(rows[0])) if rows else 0
    last = column + len(motif) - 1
    if not 1 <= column <= width - len(motif) + 1:
        raise ValueError(
            f"study {study}: motif column {column}: the profile has {width} match columns; "
            f"accepted: 1 .. {width - len(motif) + 1} for a motif of {len(motif)}"
        )
    starts = [site_start(r, s, column, len(motif)) for r, s in zip(rows, sequences, strict=True)]
    eligible = [i for i, at in enumerate(starts) if at is not None]
    wanted = round(share * len(sequences))
    if wanted > len(eligible):
        raise ValueError(
            f"study {study}: motif column {column}: {len(eligible)} of {len(sequences)} "
            f"sequences have a residue at each of the profile columns {column}-{last} (no "
            f"insertion between), {wanted} needed for a share of {share:g}; choose another "
            "column or a lower share"
        )
    out = list(sequences)
    for i in random.Random(seed).sample(eligible, wanted):
        at = starts[i]
        assert at is not None
        out[i] = out[i][:at] + motif + out[i][at + len(motif) :]
    return out


def family_profile(sequences: Sequence[str]) -> plan7.HMM:
    """The profile the Potts stage builds from `sequences` as `potts.family` (the study's potts
    settings): its match columns are the ones the workflow reports in."""
    section = {**section_defaults("potts"), **potts_scoring.config_section(None)}
    ids = potts_scoring.family_ids(len(sequences))
    return unaligned_profile(ids, sequences, PottsConfig.from_section(section))


def family_profile_rows(sequences: Sequence[str]) -> list[str]:
    """The hmmalign rows of `sequences` against their `family_profile`."""
    ids = potts_scoring.family_ids(len(sequences))
    return hmmalign_rows(family_profile(sequences), ids, sequences)


def enrich_class(sequences: Sequence[str], residues: str, share: float, seed: int) -> list[str]:
    """Replace each residue, with probability `share`, by a random residue of `residues`."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(residues) if rng.random() < share else r for r in seq)
        for seq in sequences
    ]


def shorten(sequences: Sequence[str], length: int) -> list[str]:
    """Keep the first `length` residues of every sequence."""
    return [seq[:length] for seq in sequences]


@dataclass(frozen=True)
class Study:
    """One study: the base model, the rounds' fine-tuning data, and what was planted.

    `rates` has one entry per round: the motif share, the class substitution rate or the
    crop length; it is ignored by the null study (whose rounds copy the base).
    `seed` seeds the models, the transforms, sampling and the SAEs, so a null study with
    another seed is another replicate.
    """

    name: str
    kind: Kind
    arch: Architecture
    rates: tuple[float, ...]
    seed: int = 0
    motif: str = ""
    residue_class: str = ""
    crop: int = 64
    embedders: tuple[str, ...] = ("base",)
    notes: str = ""
    # Steps of each round's training, when not the suite's (a composition or length shift is
    # learned in far fewer steps than a motif).
    round_steps: int | None = None
    # Model diffing (validation.model_diff): (motif, share) planted in the shared family FASTA
    # every checkpoint embeds; None leaves the model_diff stage off.
    model_diff: tuple[str, float] | None = None
    # The motif's site (None for both: a random window): a 0-based residue of every planted
    # sequence, or a homologous site, the residues aligned to the family profile's match
    # columns motif_column .. (1-based, the Potts stage's numbering; `plant_at_column`).
    motif_start: int | None = None
    motif_column: int | None = None
    # The Potts stage on (validation.potts_scoring: the motif's columns among the field shifts).
    potts: bool = False
    # The Potts profile from the natural family (potts.family: the family's crops, nothing
    # planted) rather than from the base model's samples.
    potts_family: bool = False
    # Steps of the base's training, when not the suite's (a base of its own, cached apart).
    base_steps: int | None = None
    # Rounds fine-tuned on the base's own kept samples (a null's as they are, a length shift's
    # shortened) rather than on the family.
    on_base_samples: bool = False
    # Layers the study trains SAEs on and diffs (empty: the suite's layer). A composition is a
    # property of the tokens themselves, which the first block still writes; the last block of a
    # 2-layer model holds the next-token state (VALIDATION.md "SAE training").
    layers: tuple[int, ...] = ()
    # Samples per model, when not the suite's (the Potts site study: a per-column field shift
    # needs more rows than the SAE diff; VALIDATION.md "Potts").
    n_sequences: int | None = None

    def __post_init__(self) -> None:
        if self.on_base_samples and self.kind not in ("null", "length"):
            raise ValueError(
                f"study {self.name}: on_base_samples is for null and length studies only"
            )
        if self.motif_column is not None and (
            self.motif_start is not None or not self.potts_family
        ):
            # The site's columns are those of the family profile: the one the workflow reports in.
            raise ValueError(
                f"study {self.name}: motif_column needs potts_family and no motif_start"
            )

    def round_data(
        self, family: Sequence[str], base_samples: Sequence[str] = ()
    ) -> list[list[str] | None]:
        """Fine-tuning sequences of every round (None: a copy of the base checkpoint).
        `base_samples` (the base's own kept samples) are what an `on_base_samples` study's
        rounds are fine-tuned on."""
        base = [s[: self.crop] for s in family]
        if self.on_base_samples:
            if not base_samples:
                raise ValueError(f"study {self.name}: on_base_samples needs the base's samples")
            base = list(base_samples)
        if self.kind == "null":
            return [list(base) if self.on_base_samples else None for _ in self.rates]
        if self.kind == "motif" and self.motif_column is not None:
            rows = family_profile_rows(base)
            return [
                plant_at_column(
                    base, rows, self.motif, r, self.seed * 100 + i, self.motif_column, self.name
                )
                for i, r in enumerate(self.rates, start=1)
            ]
        if self.kind == "motif":
            return [
                plant_motif(base, self.motif, r, self.seed * 100 + i, self.motif_start)
                for i, r in enumerate(self.rates, start=1)
            ]
        if self.kind == "composition":
            return [
                enrich_class(base, self.residue_class, r, self.seed * 100 + i)
                for i, r in enumerate(self.rates, start=1)
            ]
        return [shorten(base, int(r)) for r in self.rates]

    def sae_layers(self, suite_layer: int) -> tuple[int, ...]:
        """The layers of this study's SAEs and diffs (the suite's layer unless it names its own)."""
        return self.layers or (suite_layer,)

    def planted(self) -> str:
        """What a matching feature fires on: the motif, or the residue class ('' for none)."""
        return (
            self.motif
            if self.kind == "motif"
            else (self.residue_class if self.kind == "composition" else "")
        )


@dataclass(frozen=True)
class Suite:
    """Studies plus the sizes every study of the suite shares."""

    name: str
    studies: tuple[Study, ...]
    shape: ModelShape
    base_steps: int
    round_steps: int
    n_sequences: int
    kfold: int
    sae_tokens: int
    finetune_tokens: int
    d_sae: int
    k: int
    layer: int
    probe_permutations: int
    # sae.lr of every study. The schema's default (4e-4) suits SAEs of wide models trained on
    # millions of tokens; a 48-dimensional model's SAE trained for a few hundred steps at it is
    # undertrained (measured on the composition study's first layer: a latent for K alone
    # appears at 1.6M tokens with 4e-4, at 400k with 2e-3; VALIDATION.md "SAE training").
    sae_lr: float = 4e-4
    round_lr: float = 2e-3
    # Rounds trained from the base on their own data (True) or each from the one before.
    rounds_from_base: bool = False
    # Sampling keys that override the workflow's defaults in every study's config.
    sampling: Mapping[str, Any] = field(default_factory=dict)
    # SAE schemes (sae.schemes): every scheme is kfold SAE jobs and kfold feature_stats jobs
    # per lens, most of a study's time; 'per_model' is left out at suite size.
    schemes: tuple[str, ...] = ("base", "pooled")

    @property
    def families(self) -> tuple[str, ...]:
        """Diff families: one per SAE scheme, of the same name (plmdiff.config.paths)."""
        return self.schemes


SHAPE = ModelShape(n_layer=2, n_embd=48, n_head=4, n_positions=128)
# SAE latents per model dimension: the study authors' ZymCTRL SAEs have 15,360 latents on 1,280
# dimensions (12x, anchors). At 2.7x (128 latents) no latent of the CI study was specific enough
# to the motif (>= 5x enriched) on one machine and just so on another; at 12x one is (measured:
# 6.8-7.5x, VALIDATION.md "Dictionary size").
SAE_EXPANSION = 12
# The suites' SAE learning rate (Suite.sae_lr).
SAE_LR = 2e-3

# Motifs built from the family's rarest residues (W 1.1%, C 1.6%, Y 2.0%, M 2.1%), so that a
# feature for them cannot be a feature the base model already had for common residues.
MOTIF_GPT2 = "WCYMW"
MOTIF_LLAMA = "MCWFY"
# The motif_site study's site: profile columns 18-22 of the family's 50 (potts.family: the
# crops the models train on). A fixed residue is not a fixed column (the family differs in
# length before it: the aligner put a motif planted at residue 31 in its modal columns in 35-44%
# of occurrences), so the motif overwrites the residues aligned to these columns. Measured
# (VALIDATION.md, "Potts"): mid-profile, 17 columns on the left and 28 on the right anchor the
# alignment; 1,073 of the 1,252 crops (86%) are eligible, above the last round's 80% (windows
# starting at columns 1-2 or 31-46 have fewer); planted at 80% and re-aligned, 99.9% of the
# motif's occurrences sit at these columns (the earlier run's modal placement, too).
MOTIF_COLUMN = 18
# Apart from the full suite (`potts_suite`): its base trains for 1,000 steps (~25 epochs of the
# family, as long as its rounds' 200 + 800), as the suite's 200-step base samples sequences no
# profile aligns.
MOTIF_SITE_STUDY = Study(
    "motif_site_gpt2",
    "motif",
    "gpt2",
    (0.4, 0.8),
    seed=6,
    motif=MOTIF_GPT2,
    motif_column=MOTIF_COLUMN,
    potts=True,
    potts_family=True,
    base_steps=1000,
    # At the suite's 160 the motif's fifth column ranked 6th behind a background column (their
    # intervals overlap); at 480 on the same checkpoints all five led (VALIDATION.md "Potts").
    n_sequences=480,
)
# The base lens (the base model embeds every round) and the self lens (each model its own).
LENSES = ("base", "self")


# Round training, measured by `validation.calibrate` (VALIDATION.md, "Calibration"): 60 steps
# chained from the previous round at lr 2e-3 left the motif in 0-13% of the samples; each round
# trained from the base for 800 steps at lr 5e-3 learns it at the rates.
ROUND_STEPS = 800
ROUND_LR = 5e-3
SHIFT_STEPS = 200
# The CI motif at lr 2e-3 (measured: 18% / 54% of the kept samples), enough for its >= 30%.
CI_ROUND_LR = 2e-3
NULL_SEEDS = 10


# Rounds that only shorten: fine-tuned on the base's own samples, cut to 48 / 34 residues.
LENGTH_STUDY = Study(
    "length_gpt2",
    "length",
    "gpt2",
    (48, 34),
    seed=5,
    round_steps=SHIFT_STEPS,
    on_base_samples=True,
)


def full_suite() -> Suite:
    """Planted motifs (strong, moderate; GPT-2 and LLaMA), composition, length, and NULL_SEEDS
    null studies (no training: their cost is the workflow's alone)."""
    studies = (
        Study(
            "motif_strong_gpt2",
            "motif",
            "gpt2",
            (0.4, 0.8),
            seed=1,
            motif=MOTIF_GPT2,
            model_diff=(MOTIF_GPT2, 0.8),  # the last round's rate
        ),
        Study(
            "motif_moderate_gpt2",
            "motif",
            "gpt2",
            (0.25, 0.55),
            seed=2,
            motif=MOTIF_GPT2,
            embedders=LENSES,  # the one study seen through both lenses (time)
        ),
        Study("motif_moderate_llama", "motif", "llama", (0.2, 0.4), seed=3, motif=MOTIF_LLAMA),
        Study(
            "composition_gpt2",
            "composition",
            "gpt2",
            (0.06, 0.12),
            seed=4,
            residue_class="KR",
            round_steps=SHIFT_STEPS,
            layers=(1, 2),
        ),
        LENGTH_STUDY,
        *(
            Study(
                f"null_gpt2_s{i}",
                "null",
                "gpt2",
                (0, 0),
                seed=10 + i,
                # One null seed runs model diffing, on the strong motif study's shared set (time);
                # its rounds are fine-tuned on the base's samples, so that model diffing compares
                # models that differ (copies of the base would make its null vacuous), for the
                # shift studies' 200 steps: ~5 passes over the samples, a change the size of a
                # round's without the 800 steps' ~20 passes that would narrow what it samples.
                model_diff=(MOTIF_GPT2, 0.8) if i == 0 else None,
                on_base_samples=i == 0,
                round_steps=SHIFT_STEPS if i == 0 else None,
            )
            for i in range(NULL_SEEDS)
        ),
    )
    return Suite(
        name="full",
        studies=studies,
        shape=SHAPE,
        base_steps=200,
        round_steps=ROUND_STEPS,
        round_lr=ROUND_LR,
        rounds_from_base=True,
        n_sequences=160,
        kfold=3,
        sae_tokens=160000,
        finetune_tokens=10000,
        d_sae=SAE_EXPANSION * SHAPE.n_embd,
        k=8,
        layer=2,
        probe_permutations=5,
        sae_lr=SAE_LR,
    )


def ci_suite() -> Suite:
    """The planted and null studies at the smallest size that still plants a findable motif
    (the last round carries it in >= 30% of its samples)."""
    studies = (
        Study(
            "ci_motif_gpt2",
            "motif",
            "gpt2",
            (0.4, 0.8),
            seed=1,
            motif=MOTIF_GPT2,
            embedders=("base",),
        ),
        Study("ci_null_gpt2", "null", "gpt2", (0, 0), seed=10, embedders=("base",)),
    )
    return Suite(
        name="ci",
        studies=studies,
        shape=SHAPE,
        base_steps=200,
        round_steps=ROUND_STEPS,
        round_lr=CI_ROUND_LR,
        rounds_from_base=True,
        # 200 samples per model (a real study has ~1,000): each of the 3 fold replicas holds ~65
        # of every model's sequences; at 120 (40 per replica) the motif latent's change was called
        # in 1 of 3 replicas in some runs (VALIDATION.md, "Dictionary size and samples").
        n_sequences=200,
        kfold=3,
        sae_tokens=60000,
        finetune_tokens=8000,
        d_sae=SAE_EXPANSION * SHAPE.n_embd,
        k=6,
        layer=2,
        probe_permutations=3,
        sae_lr=SAE_LR,
    )


def potts_suite() -> Suite:
    """The motif at homologous profile columns with the Potts stage, at the full suite's sizes:
    apart from `full` for its base of its own (1,000 steps; `make validate-potts`)."""
    return replace(full_suite(), name="potts", studies=(MOTIF_SITE_STUDY,))


def length_suite() -> Suite:
    """Length shifts the length-effect settings (diff.position_bin, diff.length_effect_ratio)
    were not chosen on: the plain-format LLaMA, and GPT-2 with another seed and other lengths.
    `length_gpt2` of the full suite (also run here) is where they were chosen (VALIDATION.md
    "The length effect"); the other two are its held-out check (`make validate-length`)."""
    held_out = (
        replace(LENGTH_STUDY, name="length_llama", arch="llama", seed=6),
        replace(LENGTH_STUDY, name="length_gpt2_s7", rates=(56, 40), seed=7),
    )
    return replace(full_suite(), name="length", studies=(LENGTH_STUDY, *held_out))


SUITES = {"full": full_suite, "ci": ci_suite, "potts": potts_suite, "length": length_suite}
