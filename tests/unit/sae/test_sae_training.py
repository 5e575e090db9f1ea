"""sae-lens SAEs trained by plmdiff: dictionary recovery, fine-tune start, save/load, normalisation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.sae.training import (
    SAESettings,
    build_training_sae,
    input_normalisation,
    load_sae,
    sae_batches,
    save_sae,
    standardize_tokens,
    train,
    training_sae_from,
)
from plmdiff.testing.settings import sae_settings


def planted_dictionary(d: int = 32, n_atoms: int = 64, k: int = 3, seed: int = 0):
    """Unit-norm atoms and an endless stream of samples, each a positive mix of k atoms."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)

    def batches(batch_size: int):
        while True:
            idx = torch.rand(batch_size, n_atoms, generator=g).argsort(dim=1)[:, :k]
            coef = torch.zeros(batch_size, n_atoms)
            coef.scatter_(1, idx, 1 + torch.rand(batch_size, k, generator=g))
            yield coef @ atoms

    return atoms, batches


def recovered_fraction(atoms: torch.Tensor, sae, threshold: float = 0.9) -> float:
    w = sae.W_dec.detach()
    w = w / w.norm(dim=1, keepdim=True)
    best = (atoms @ w.T).max(dim=1).values
    return float((best > threshold).float().mean())


def activations(n: int = 512, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Residual-stream-like data: a large common offset, per-token scale, a few heavy dims."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * (1 + 3 * torch.rand(n, 1, generator=g))
    return x + 5.0 + torch.linspace(0, 4, d)


def stream(x: torch.Tensor, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield x[perm[i : i + batch_size]]


def quick_train(settings: SAESettings, x: torch.Tensor, steps: int = 20, sae=None):
    sae = sae if sae is not None else build_training_sae(settings, x.shape[1], seed=1)
    standardize = settings.normalize == "unit_norm"
    return train(
        sae,
        sae_batches(stream(x, settings.batch_size), standardize=standardize),
        tokens=steps * settings.batch_size,
        batch_size=settings.batch_size,
        lr=settings.lr,
        dead_window_steps=settings.dead_window_steps,
    )


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_sparse_sae_recovers_a_planted_dictionary(architecture):
    atoms, batches = planted_dictionary()
    settings = sae_settings(
        architecture=architecture, d_sae=128, k=3, normalize="none", batch_size=256, lr=3e-3
    )
    sae = build_training_sae(settings, 32, seed=1)
    assert recovered_fraction(atoms, sae) < 0.2  # a random dictionary does not pass
    result = train(
        sae,
        batches(256),
        tokens=1000 * 256,
        batch_size=256,
        lr=settings.lr,
        dead_window_steps=50,
    )
    assert recovered_fraction(atoms, result.sae) >= 0.8
    curves = result.curves
    assert {"step", "tokens", "loss", "l0", "dead_fraction"} <= set(curves.columns)
    assert curves["tokens"].iloc[-1] == result.tokens == 1000 * 256
    assert curves["loss"].iloc[-1] < 0.5 * curves["loss"].iloc[0]
    assert curves["l0"].iloc[-1] == pytest.approx(3.0, abs=0.5)


def test_unit_norm_is_sae_lens_layer_norm():
    settings = sae_settings(architecture="standard", d_sae=32, normalize="unit_norm")
    sae = build_training_sae(settings, 16)
    sae.cfg.normalize_activations = "layer_norm"
    sae._setup_activation_normalization()
    x = activations()
    assert torch.allclose(sae.run_time_activation_norm_fn_in(x), standardize_tokens(x), atol=1e-6)
    z = standardize_tokens(x)
    assert torch.allclose(z.mean(-1), torch.zeros(len(x)), atol=1e-5)
    assert torch.allclose(z.std(-1), torch.ones(len(x)), atol=1e-4)


@pytest.mark.parametrize("architecture", ["batchtopk", "topk", "jumprelu", "standard"])
def test_save_load_round_trip_encodes_raw_activations(tmp_path, architecture):
    x = activations()
    settings = sae_settings(
        architecture=architecture,
        d_sae=48,
        k=4,
        batch_size=64,
        lr=1e-3,
        l1_coefficient=1e-3,
        dead_window=640,
    )
    result = quick_train(settings, x)
    trained = result.sae.eval()
    save_sae(trained, tmp_path / "a", normalisation="layer_norm", metadata={"plmdiff": {"x": 1}})
    loaded = load_sae(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "layer_norm"
    assert cfg["metadata"]["plmdiff"] == {"x": 1}
    assert input_normalisation(loaded) == "layer_norm"

    with torch.no_grad():
        acts = loaded.encode(x)
        recon = loaded.decode(acts)
        # The loaded SAE takes raw activations and returns raw scale: the trained SAE on the
        # standardised batch, de-standardised.
        mu = x.mean(-1, keepdim=True)
        sd = (x - mu).std(-1, keepdim=True)
        z = standardize_tokens(x)
        if architecture == "batchtopk":
            # Stored as JumpReLU with BatchTopK's running threshold (sae-lens's inference form).
            assert cfg["architecture"] == "jumprelu"
            hidden = (z - trained.b_dec) @ trained.W_enc + trained.b_enc
            hidden = hidden * trained.W_dec.norm(dim=-1)
            threshold = float(trained.topk_threshold)
            assert torch.allclose(loaded.threshold, torch.full((48,), threshold), atol=1e-6)
            expected_acts = hidden.relu() * (hidden > threshold)
            assert torch.allclose(acts, expected_acts, atol=1e-4)
            expected = (expected_acts / trained.W_dec.norm(dim=-1)) @ trained.W_dec + trained.b_dec
        else:
            expected = trained.decode(trained.encode(z))
        assert torch.allclose(recon, expected * (sd + 1e-5) + mu, atol=1e-4)
        assert acts.count_nonzero() > 0

    # Saving the loaded SAE again and loading it gives the very same SAE.
    save_sae(loaded, tmp_path / "b")
    again = load_sae(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(again.encode(x), acts)
        assert torch.equal(again.decode(acts), recon)


def test_fine_tune_starts_exactly_from_the_base(tmp_path):
    x = activations(seed=1)
    settings = sae_settings(architecture="batchtopk", d_sae=48, k=4, batch_size=64, lr=1e-3)
    base = quick_train(settings, x, steps=30).sae
    save_sae(base, tmp_path / "base", normalisation="layer_norm")
    loaded = load_sae(tmp_path / "base")

    fine = training_sae_from(loaded, replace(settings, expansion=99), seed=5)
    assert fine.cfg.d_sae == 48  # the base's dictionary, whatever expansion says
    assert fine.cfg.normalize_activations == "none"  # batches are standardised instead
    seen: dict[str, torch.Tensor] = {}

    def check_start(sae):
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(getattr(sae, name).detach(), getattr(loaded, name).detach()), name
            seen[name] = getattr(sae, name).detach().clone()
        assert float(sae.topk_threshold) == pytest.approx(
            float(loaded.threshold[0].detach()), rel=1e-6
        )

    result = train(
        fine,
        sae_batches(stream(activations(seed=2), 64), standardize=True),
        tokens=20 * 64,
        batch_size=64,
        lr=settings.finetune_lr,
        dead_window_steps=10,
        on_start=check_start,
    )
    assert set(seen) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    moved = result.sae.W_dec.detach()
    assert not torch.equal(moved, seen["W_dec"])  # it trained ...
    cos = torch.nn.functional.cosine_similarity(moved, seen["W_dec"], dim=1)
    assert cos.min() > 0.9  # ... from the base, not from a fresh initialisation


def test_fine_tune_of_a_non_unit_decoder_keeps_the_base_function(tmp_path):
    x = activations(seed=3)
    settings = sae_settings(architecture="standard", d_sae=40, batch_size=64, l1_coefficient=1e-3)
    base = quick_train(settings, x).sae.eval()
    fine = training_sae_from(base, replace(settings, architecture="topk", k=40))
    assert fine.cfg.rescale_acts_by_decoder_norm is False
    with torch.no_grad():
        z = standardize_tokens(x)
        # k = d_sae keeps every positive feature: TopK then equals the standard SAE's ReLU.
        assert torch.allclose(fine.decode(fine.encode(z)), base.decode(base.encode(z)), atol=1e-5)


def test_settings_from_config():
    s = sae_settings(architecture="topk", expansion=4, k=8, base={"import": "x/{layer}"})
    assert (s.architecture, s.dictionary_size(32), s.import_path) == ("topk", 128, "x/{layer}")
    assert sae_settings(d_sae=100).dictionary_size(32) == 100
    assert sae_settings(batch_size=300, dead_window=1000).dead_window_steps == 4
    with pytest.raises(ConfigError, match=r"sae.seed is missing"):
        SAESettings.from_section({k: v for k, v in section_defaults("sae").items() if k != "seed"})


def test_load_sae_names_a_missing_file(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(DataError, match=r"lacks sae_weights.safetensors"):
        load_sae(tmp_path)
