"""Files written whole or not at all, and the axes of arrays in files.

Atomic writes: one temporary file next to the target, renamed over it on success (``os.replace`` is atomic on POSIX
and Windows) and removed on any error, so an interrupted run never leaves a partial image, table, checkpoint or
datalist behind. Every writer of the bundle and its tools goes through :func:`atomic_path`.

Axes: MONAI's readers give arrays in ``(X, Y[, Z])`` order (first axis the image's width), image files (PNG, TIFF,
zarr, numpy) hold ``(Y, X)`` / ``(Z, Y, X)``; :func:`reverse_axes` converts either way."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "save_png_atomic", "reverse_axes"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield ``.<stem>.partial<suffix>`` next to ``path`` to write to; on success rename it over ``path``, on any
    error remove it. ``suffix`` defaults to ``path``'s own (pass e.g. ``".nii.gz"`` for double suffixes, which
    writers use to pick the format). Creates ``path``'s folder."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{stem}.partial{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(obj: object, path: str | os.PathLike, indent: int = 4) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(json.dumps(obj, indent=indent), path)


def save_png_atomic(array, path: str | os.PathLike) -> None:
    """Write a 2D (or ``(Y, X, 3)``) array as a PNG to ``path`` atomically (Pillow infers the mode from the dtype)."""
    from PIL import Image

    with atomic_path(path, ".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def reverse_axes(array: Array, leading: int = 0, trailing: int = 0, contiguous: bool = False) -> Array:
    """``array`` with its spatial axes in reverse order: MONAI's ``(X, Y[, Z])`` to a file's ``(Y, X)`` /
    ``(Z, Y, X)`` and back (the function is its own inverse). The first ``leading`` axes (batch, channel) and the last
    ``trailing`` axes (e.g. RGB samples) keep their place. numpy arrays or torch tensors; a view unless
    ``contiguous``."""
    n = array.ndim
    order = (*range(leading), *range(n - trailing - 1, leading - 1, -1), *range(n - trailing, n))
    if isinstance(array, torch.Tensor):
        out = array.permute(order)
        return out.contiguous() if contiguous else out
    out = np.transpose(array, order)
    return np.ascontiguousarray(out) if contiguous else out
