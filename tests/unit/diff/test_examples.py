"""Top examples as text and HTML: active residues marked, positions outside the sequence dropped."""

from __future__ import annotations

import numpy as np

from plmdiff.diff.examples import PAD_RESIDUE, html_window, marked_text


def test_example_windows_mark_active_residues():
    acts = [np.nan, 0.0, 1.5, 0.5, np.nan]
    residues = f"{PAD_RESIDUE}abc{PAD_RESIDUE}"
    assert marked_text(residues, acts) == "a[B]C"
    window = html_window(residues, acts, window_start=9)
    assert window.count("<span") == 3  # positions outside the sequence are not drawn
    assert 'class="peak"' in window and 'title="residue 12: 1.5"' in window
    assert 'title="residue 11">a<' in window
    assert marked_text("ab", [0.0, 0.0]) == "ab"
