"""The bundle's presets: which config files, merged over ``inference.json`` (or ``train.json``), make each one.

The docs' run commands, the bioimage.io packages (``tools/bmz.py``) and the napari plugin (``napari_r2attunet``)
all take a preset by these names."""

from __future__ import annotations

import os
from pathlib import Path

from scripts import InputError

__all__ = ["PRESETS", "config_files"]

PRESETS: dict[str, tuple[str, ...]] = {
    "nuclei": (),  # the defaults: nuclei in 2D light microscopy, as objects
    "em2d": ("em2d.json",),  # ISBI 2012 membranes, neuron segments
    "em3d": ("em3d.json",),  # mitochondria in anisotropic ssTEM volumes, 3D
    "em2d_mito": ("em2d.json", "em2d_mito.json"),  # mitochondria, section by section
}


def config_files(preset: str, bundle_root: str | os.PathLike, base: str = "inference.json") -> list[str]:
    """The config files of ``preset`` in merge order, ``base`` first, as paths under ``bundle_root/configs``."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return [str(Path(bundle_root) / "configs" / f) for f in (base, *PRESETS[preset])]
