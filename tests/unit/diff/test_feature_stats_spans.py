"""Feature statistics on tokens of several residues (a BPE tokenizer): top-example windows are
in residues, each residue carrying the activation of the token that holds it."""

from __future__ import annotations

import numpy as np
import torch

from plmdiff.activations.readers import iter_token_batches
from plmdiff.activations.writers import TokenWriter
from plmdiff.diff.feature_stats import _ModelAccumulator, _top_frame, complete_sequences
from tests.unit.activations.files import META


def test_top_example_windows_map_tokens_to_residues(tmp_path):
    """The most active token is 'LAG' (residues 3..5): the window is centred on its first
    residue, and each residue shows the activation of the token that holds it."""
    spans = [np.array([[0, 2], [2, 3], [3, 6]])]
    with TokenWriter(
        tmp_path / "part-00000.parquet", layer=1, d_model=2, dtype="float32", metadata=META
    ) as w:
        w.write(["a"], ["MKVLAG"], np.zeros((3, 2), np.float32), spans=spans)
    (batch,) = iter_token_batches([tmp_path], batch_rows=100)
    (chunk,) = complete_sequences([batch], "x")
    acc = _ModelAccumulator(d_sae=1, n_top=1, window=2, device="cpu", position_bin=1)
    acc.add(torch.tensor([[0.0], [0.5], [2.0]]), chunk, np.array([0]))
    (row,) = _top_frame(acc, "m", {0: "a"}, chunk.residues, 0).itertuples()
    assert (row.pos, row.pos_end, row.window_start, row.value) == (3, 6, 1, 2.0)
    assert row.window_residues == "KVLAG"
    np.testing.assert_array_equal(row.window_acts, [0.0, 0.5, 2.0, 2.0, 2.0])
