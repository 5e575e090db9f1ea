"""The crosscoder recovers planted shared and exclusive directions; latent scaling flags an
artifact that decoder norms alone would call round-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmdiff.model_diff.crosscoder import (
    BatchTopKCrosscoder,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)
from plmdiff.model_diff.paired import PairedRows
from plmdiff.model_diff.scaling import (
    BASE_ONLY,
    ROUND_ONLY,
    SHARED,
    class_counts,
    evaluate,
    latent_table,
    position_enrichment,
)

D = 16


def planted(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paired activations [n, 2, D] (one dictionary, `seed` draws the tokens): 4 shared directions (both models), one base-only and one
    round-only direction, each firing on 15% of the tokens with magnitude 1..3."""
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0].T[:6]
    rng = np.random.default_rng(seed)
    coef = rng.uniform(1, 3, size=(n, 6)) * (rng.random((n, 6)) < 0.15)
    base = coef[:, :4] @ basis[:4] + coef[:, [4]] * basis[4]
    rnd = coef[:, :4] @ basis[:4] + coef[:, [5]] * basis[5]
    x = np.stack([base, rnd], axis=1) + 0.01 * rng.normal(size=(n, 2, D))
    dirs = {"shared": basis[:4], "base_only": basis[4:5], "round_only": basis[5:6]}
    return x.astype(np.float32), dirs


def rows_of(x: np.ndarray) -> list[PairedRows]:
    n = len(x)
    ids = np.array([f"s{i // 10}" for i in range(n)])
    return [PairedRows(ids, np.arange(n) % 10, np.array(["A"] * n), x)]


def batches(x: np.ndarray, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(x)
    while True:
        yield t[torch.randperm(len(t), generator=gen)[:batch]]


# 4.0: the round's activations 4x the base's (fine-tuning grew them 3.6x in the validation
# suite); shared directions stay shared because each model is normalised by its own scale.
@pytest.mark.parametrize("round_scale", [1.0, 4.0])
def test_crosscoder_recovers_planted_shared_and_exclusive_directions(tmp_path, round_scale):
    x, dirs = planted(20000, seed=0)
    x[:, 1] *= round_scale
    torch.manual_seed(0)
    model = BatchTopKCrosscoder(2, D, 24, k=2, seed=0)
    log = train_crosscoder(
        model, batches(x, 256, 1), tokens=256 * 1500, lr=3e-3, aux_penalty=1 / 32, dead_tokens=5000
    )
    assert log.steps == 1500
    held, _ = planted(4000, seed=1)
    held[:, 1] *= round_scale
    ev = evaluate(model, rows_of(held), n_top=3)
    assert (ev.fvu < 0.1).all(), ev.fvu
    table = latent_table(
        model, ev, ["base", "r1"], exclusive_cut=0.1, shared_width=0.1, nu_max=0.5, min_firings=20
    )
    dec = model.W_dec.detach().numpy()
    alive = ev.fires >= 20

    def best(direction: np.ndarray, m: int) -> int:
        unit = dec[:, m] / np.linalg.norm(dec[:, m], axis=-1, keepdims=True).clip(1e-12)
        cos = np.where(alive, unit @ direction, -1)
        j = int(np.argmax(cos))
        assert cos[j] > 0.9, (direction, cos[j])
        return j

    for direction in dirs["shared"]:
        j = best(direction, 0)
        assert table.loc[j, "class"] == SHARED, table.loc[j]
    j = best(dirs["round_only"][0], 1)
    assert table.loc[j, "class"] == ROUND_ONLY
    assert not table.loc[j, "artifact"] and table.loc[j, "nu_error"] < 0.2
    j = best(dirs["base_only"][0], 0)
    assert table.loc[j, "class"] == BASE_ONLY
    counts = class_counts(table)
    assert counts.loc[0, "round_only_genuine"] >= 1

    save_crosscoder(model, tmp_path / "cc.safetensors")
    again = load_crosscoder(tmp_path / "cc.safetensors")
    xt = model.normalise(torch.from_numpy(held[:64]))
    assert torch.allclose(again.encode(xt), model.encode(xt))


def _hand_built(direction: np.ndarray) -> BatchTopKCrosscoder:
    """One latent that reads `direction` from the round and decodes only into the round."""
    model = BatchTopKCrosscoder(2, D, 2, k=1)
    with torch.no_grad():
        d = torch.from_numpy(direction).float()
        model.W_enc.zero_()
        model.W_enc[1, :, 0] = d
        model.W_dec.zero_()
        model.W_dec[0, 1] = d
        model.W_dec[1, 0] = torch.eye(D)[0] * 1e-3  # a second latent that never fires
        model.b_enc.zero_()
        model.b_dec.zero_()
        model.mean.zero_()
        model.threshold.fill_(0.5)  # above the noise, below every planted firing
    return model


def test_latent_scaling_flags_a_shared_concept_mislabelled_round_only():
    rng = np.random.default_rng(3)
    n = 3000
    v = np.eye(D)[3]
    coef = rng.uniform(1, 2, size=n) * (rng.random(n) < 0.3)
    noise = 0.05 * rng.normal(size=(n, 2, D))
    model = _hand_built(v)
    # The artifact: the concept is in both models, the latent decodes it into the round only.
    shared = np.stack([coef[:, None] * v, coef[:, None] * v], axis=1) + noise
    # The genuine case: the concept is in the round only.
    genuine = np.stack([np.zeros((n, D)), coef[:, None] * v], axis=1) + noise
    kwargs = dict(exclusive_cut=0.1, shared_width=0.1, nu_max=0.5, min_firings=20)
    flagged = latent_table(
        model,
        evaluate(model, rows_of(shared.astype(np.float32)), n_top=2),
        ["base", "r1"],
        **kwargs,
    )
    kept = latent_table(
        model,
        evaluate(model, rows_of(genuine.astype(np.float32)), n_top=2),
        ["base", "r1"],
        **kwargs,
    )
    assert flagged.loc[0, "class"] == ROUND_ONLY == kept.loc[0, "class"]
    assert flagged.loc[0, "nu_error"] > 0.9 and bool(flagged.loc[0, "artifact"])
    assert abs(kept.loc[0, "nu_error"]) < 0.1 and not bool(kept.loc[0, "artifact"])
    # The planted-motif hook: the latent fires on the marked (concept) tokens only.
    rows = rows_of(genuine.astype(np.float32))
    marked = {(s, int(p)) for s, p, c in zip(rows[0].seq_id, rows[0].pos, coef, strict=True) if c}
    hook = position_enrichment(model, rows, [0, 1], marked)
    assert hook.loc[0, "recall"] > 0.95 and hook.loc[0, "enrichment"] > 100
    assert hook.loc[1, "recall"] == 0


def test_latent_scaling_betas_match_the_closed_form_with_three_models():
    rng = np.random.default_rng(5)
    model = BatchTopKCrosscoder(3, D, 8, k=2, seed=3)
    with torch.no_grad():
        model.threshold.fill_(0.0)
        model.mean.copy_(torch.randn(3, D) * 0.1)
    x = rng.normal(size=(500, 3, D)).astype(np.float32)
    ev = evaluate(model, rows_of(x), n_top=1, batch_rows=128)
    xt = torch.from_numpy(x)
    f = model.encode(xt).detach().numpy()
    x_hat = model.decode(torch.from_numpy(f)).detach().numpy()
    dec = model.W_dec.detach().numpy()
    mean = model.mean.numpy()
    for target, direction in [(0, 1), (1, 1), (0, 0), (2, 0), (0, 2), (2, 2)]:
        for j in range(8):
            fj = f[:, j]
            if not (fj > 0).any():
                continue
            d = dec[j, direction]
            contrib = fj[:, None] * dec[j, target]
            y_err = x[:, target] - x_hat[:, target] + contrib
            y_rec = x_hat[:, target] - contrib - mean[target]
            denom = (d @ d) * (fj @ fj)
            assert ev.beta_error[target, direction, j] == pytest.approx(
                d @ (fj @ y_err) / denom, rel=1e-3, abs=1e-4
            )
            assert ev.beta_recon[target, direction, j] == pytest.approx(
                d @ (fj @ y_rec) / denom, rel=1e-3, abs=1e-4
            )
