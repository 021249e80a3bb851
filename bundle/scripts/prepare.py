"""Command line for data preparation.

``python -m scripts.prepare dsb2018 --src <stage1_train> --out <dir> [--fixes <dir>] [--val_fraction 0.1] [--seed 0]``
``python -m scripts.prepare isbi2012 --src <isbi2012> --out <dir> [--val_slices "[20,21,22,23,24]"]``
``python -m scripts.prepare vnc --src <stack1> --out <dir> [--target mitochondria] [--val_sections "[10,...,15]"]``
``python -m scripts.prepare folders --images <dir> --labels <dir> --out <dir> [--val_fraction 0.1] [--seed 0]``
"""

from __future__ import annotations

import logging

import fire

from scripts.data import prepare_dsb2018, prepare_folders, prepare_isbi2012, prepare_vnc


def dsb2018(src: str, out: str, fixes: str | None = None, val_fraction: float = 0.1, seed: int = 0, ids=None) -> None:
    """Convert DSB2018 stage1_train at ``src`` (original layout) into ``out`` with a seeded ``datalist.json``."""
    datalist = prepare_dsb2018(src, out, fixes=fixes, ids=ids, val_fraction=val_fraction, seed=seed)
    print(f"{out}/datalist.json: {len(datalist['training'])} training, {len(datalist['validation'])} validation")


def isbi2012(src: str, out: str, val_slices=(20, 21, 22, 23, 24)) -> None:
    """Convert ISBI 2012 (TIFF stacks or one PNG per slice) into ``out``, membrane = 255, slices ``val_slices`` for
    validation."""
    datalist = prepare_isbi2012(src, out, val_slices=tuple(val_slices))
    print(f"{out}/datalist.json: {len(datalist['training'])} training, {len(datalist['validation'])} validation slices")


def vnc(src: str, out: str, target: str = "mitochondria", val_sections=(10, 11, 12, 13, 14, 15)) -> None:
    """Convert a Drosophila VNC ssTEM stack into ``out/volumes`` (3D) and ``out/slices`` (2D), sections
    ``val_sections`` for validation."""
    lists = prepare_vnc(src, out, target=target, val_sections=tuple(val_sections))
    print(
        f"{out}/volumes/datalist.json and {out}/slices/datalist.json: {len(lists['slices']['training'])} training, "
        f"{len(lists['slices']['validation'])} validation sections"
    )


def folders(images: str, labels: str, out: str, val_fraction: float = 0.1, seed: int = 0) -> None:
    """Your own data: a ``datalist.json`` in ``out`` pairing each image in ``images`` with the mask of the same name in
    ``labels`` (masks: 0 background, nucleus > 0, or one id per object), for ``--dataset_dir <out>``."""
    datalist = prepare_folders(images, labels, out, val_fraction=val_fraction, seed=seed)
    print(f"{out}/datalist.json: {len(datalist['training'])} training, {len(datalist['validation'])} validation")


if __name__ == "__main__":
    from scripts import one_line_errors

    one_line_errors()
    logging.basicConfig(level=logging.INFO)
    fire.Fire({"dsb2018": dsb2018, "isbi2012": isbi2012, "vnc": vnc, "folders": folders})
