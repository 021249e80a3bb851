"""Command line for data preparation.

``python -m scripts.prepare dsb2018 --src <stage1_train> --out <dir> [--fixes <dir>] [--val_fraction 0.1] [--seed 0]``
"""

from __future__ import annotations

import logging

import fire

from scripts.data import prepare_dsb2018


def dsb2018(src: str, out: str, fixes: str | None = None, val_fraction: float = 0.1, seed: int = 0, ids=None) -> None:
    """Convert DSB2018 stage1_train at ``src`` (original layout) into ``out`` with a seeded ``datalist.json``."""
    datalist = prepare_dsb2018(src, out, fixes=fixes, ids=ids, val_fraction=val_fraction, seed=seed)
    print(f"{out}/datalist.json: {len(datalist['training'])} training, {len(datalist['validation'])} validation")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    fire.Fire({"dsb2018": dsb2018})
