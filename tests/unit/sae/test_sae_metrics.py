"""SAE metrics on known cases: perfect and null reconstructions, streaming vs direct computation,
and the splice point in the residual stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plmdiff.core.errors import DataError
from plmdiff.models.anatomy import decoder_anatomy
from plmdiff.sae.metrics import (
    FitAccumulator,
    SplicedLoss,
    _replace_stream,
    ce_loss_recovered,
    reconstruction_metrics,
    spliced_lm_loss,
)


def identity_sae(d: int, scale: float = 1.0, normalize: str = "none"):
    """A standard SAE with features +e_i and -e_i: relu(x) - relu(-x) = x exactly."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, normalize_activations=normalize))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(scale * torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def batches(x: torch.Tensor, size: int):
    return [x[i : i + size] for i in range(0, len(x), size)]


def test_perfect_reconstruction_has_zero_error_and_known_sparsity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 6, generator=g) + 100.0  # positive, with a large offset
    x[:, 0] = 0.0  # never active: features +e0 and -e0 never fire
    m = reconstruction_metrics(identity_sae(6), batches(x, 64), dense_threshold=0.1)
    assert m.n_tokens == 500
    assert m.mse == 0.0 and m.fvu == 0.0 and m.explained_variance == 1.0
    assert m.l0 == pytest.approx(5.0)  # one feature per non-zero coordinate
    assert m.dead_fraction == pytest.approx(7 / 12)  # all -e_i, and +e0
    assert m.dense_fraction == pytest.approx(5 / 12)
    assert m.feature_frequency.tolist() == [0.0] + [1.0] * 5 + [0.0] * 6


def test_streaming_metrics_match_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(777, 8, generator=g) * 3 + 1000.0  # offset that would cancel in float32
    sae = identity_sae(8, scale=0.5)
    m = reconstruction_metrics(sae, batches(x, 100), dense_threshold=0.6, max_tokens=700)
    xs = x[:700].double().numpy()
    recon = 0.5 * xs
    err = ((xs - recon) ** 2).sum()
    assert m.n_tokens == 700
    assert m.mse == pytest.approx(err / xs.size, rel=1e-9)
    assert m.fvu == pytest.approx(err / ((xs - xs.mean(0)) ** 2).sum(), rel=1e-6)
    frequency = np.concatenate([(xs > 0).mean(0), (xs < 0).mean(0)])
    assert np.allclose(m.feature_frequency, frequency)


def test_fit_accumulator_matches_the_direct_computation_and_reconstruction_metrics():
    """The diff's per-model fit: FVU against a direct float64 computation, L0 and dead fraction
    against reconstruction_metrics on the same tokens."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(640, 8, generator=g) * 3 + 1000.0
    x[:, 0] = 0.0
    sae = identity_sae(8, scale=0.5)
    fit = FitAccumulator(sae.cfg.d_sae, "cpu")
    for batch in batches(x, 96):
        codes = sae.encode(batch)
        fit.add(batch, codes, sae.decode(codes))
    out = fit.to_json()
    xs = x.double().numpy()
    err = ((xs - 0.5 * xs) ** 2).sum()
    assert out["n_tokens"] == 640
    assert out["fvu"] == pytest.approx(err / ((xs - xs.mean(0)) ** 2).sum(), rel=1e-6)
    ref = reconstruction_metrics(sae, batches(x, 96), dense_threshold=0.5)
    assert out["l0"] == pytest.approx(ref.l0) and out["fvu"] == pytest.approx(ref.fvu, rel=1e-6)
    assert out["dead_fraction"] == pytest.approx(ref.dead_fraction)
    with pytest.raises(DataError, match="no token activations"):
        FitAccumulator(4, "cpu").to_json()


def test_ce_loss_recovered_formula():
    assert ce_loss_recovered(clean=2.0, spliced=2.0, zero_ablated=5.0) == 1.0
    assert ce_loss_recovered(clean=2.0, spliced=5.0, zero_ablated=5.0) == 0.0
    assert ce_loss_recovered(clean=2.0, spliced=3.0, zero_ablated=6.0) == 0.75
    assert math.isnan(ce_loss_recovered(clean=2.0, spliced=2.0, zero_ablated=2.0))
    pooled = SplicedLoss.pool(
        [SplicedLoss(1, 10, 1.0, 2.0, 3.0), SplicedLoss(2, 30, 2.0, 2.0, 4.0)]
    )
    assert (pooled.n_predictions, pooled.clean, pooled.spliced) == (40, 1.75, 2.0)


@pytest.fixture(scope="module")
def tiny_lm(tiny_checkpoints):
    from plmdiff.models.checkpoints import load_model
    from plmdiff.models.text import encode_sequences
    from plmdiff.models.zymctrl import load_zymctrl_tokenizer
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS, family_sequences

    model = load_model(tiny_checkpoints["r0"])
    seqs = [s[:40] for s in family_sequences(limit=6)]
    encoded = encode_sequences(load_zymctrl_tokenizer(), ZYMCTRL_FORMAT, ZYMCTRL_IDS, seqs)
    return model, encoded


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_perfect_sae_recovers_all_and_null_sae_none_of_the_loss(tiny_lm, layer):
    model, encoded = tiny_lm
    d = model.config.n_embd
    perfect = spliced_lm_loss(model, identity_sae(d), encoded, layer=layer, pad_id=0, batch_size=4)
    assert perfect.n_sequences == 6
    assert perfect.n_predictions == sum(e.n_residues for e in encoded)  # residues -> next token
    assert perfect.zero_ablated > perfect.clean + 0.1
    assert perfect.spliced == perfect.clean
    assert perfect.recovered == 1.0
    null = spliced_lm_loss(model, identity_sae(d, scale=0.0), encoded, layer=layer, pad_id=0)
    assert null.spliced == pytest.approx(null.zero_ablated, abs=1e-9)
    assert null.recovered == pytest.approx(0.0, abs=1e-9)
    half = spliced_lm_loss(
        model, identity_sae(d, scale=0.5, normalize="layer_norm"), encoded, layer=layer, pad_id=0
    )
    assert half.clean < half.spliced and half.recovered < 1.0


def test_splice_point_is_the_residual_stream_after_l_blocks(tiny_lm):
    model, encoded = tiny_lm
    ids = torch.tensor([encoded[0].ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    n_layers = model.config.n_layer
    for layer in range(n_layers + 1):
        seen: list[torch.Tensor] = []

        def record(h: torch.Tensor, seen: list = seen) -> torch.Tensor:
            seen.append(h.clone())
            return h

        module = decoder_anatomy(model).stream_module(layer)
        with _replace_stream(module, record), torch.no_grad():
            model(input_ids=ids)
        if layer < n_layers:
            assert torch.allclose(seen[0], hidden[layer], atol=1e-6)
        else:  # Hugging Face's last hidden state is after ln_f; the splice is before it
            assert module is model.transformer.ln_f
            assert torch.allclose(model.transformer.ln_f(seen[0]), hidden[layer], atol=1e-5)
    with pytest.raises(Exception, match=r"layers 0\.\.2"):
        decoder_anatomy(model).stream_module(n_layers + 1)
