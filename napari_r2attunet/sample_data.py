"""napari sample data: the bundle's shipped DSB2018 sample images (CC0, sample_data/dsb2018/PROVENANCE.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from napari_r2attunet.segment import bundle_dir

__all__ = ["sample_nuclei"]


def sample_nuclei() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """The 12 shipped DSB2018 images (8-bit gray, 256x256 to 1272x603) as image layers, named by their ids."""
    folder = bundle_dir() / "sample_data" / "dsb2018" / "images"
    layers = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as im:
            layers.append((np.asarray(im), {"name": path.stem[:12], "visible": not layers}, "image"))
    return layers
