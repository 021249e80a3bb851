"""Unit tests of scripts.files' axes utility (its atomic writers are tested in test_reliability.py)."""

import numpy as np
import torch

from scripts.files import reverse_axes


def test_reverse_axes_swaps_monai_and_file_order_both_ways():
    zyx = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    xyz = reverse_axes(zyx)
    assert xyz.shape == (4, 3, 2) and xyz[3, 2, 1] == zyx[1, 2, 3]
    assert np.array_equal(reverse_axes(xyz), zyx)
    rgb = np.zeros((2, 3, 4, 3))  # (Z, Y, X, S): the samples stay last
    assert reverse_axes(rgb, trailing=1).shape == (4, 3, 2, 3)
    batch = torch.zeros(1, 5, 4, 3)  # (B, C, X, Y): batch and channel stay first
    out = reverse_axes(batch, leading=2, contiguous=True)
    assert out.shape == (1, 5, 3, 4) and out.is_contiguous()
    assert reverse_axes(zyx, contiguous=True).flags["C_CONTIGUOUS"]
