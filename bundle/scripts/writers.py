"""Atomic image writers: an interrupted run never leaves a half-written output file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from monai.data import ImageWriter, PILWriter
from PIL import Image

__all__ = ["atomic_path", "AtomicPILWriter", "AtomicStackWriter"]

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield ``.<stem>.partial<suffix>`` next to ``path`` to write to; on success rename it over ``path``
    (``os.replace`` is atomic on POSIX and Windows), on any error remove it. ``suffix`` defaults to ``path``'s own
    (pass e.g. ``".nii.gz"`` for double suffixes, which writers use to pick the format)."""
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


class AtomicPILWriter(PILWriter):
    """MONAI's :class:`~monai.data.PILWriter` that writes ``.<name>.partial<ext>`` next to the target, then renames
    it over the target (``os.replace`` is atomic on POSIX and Windows). Use as ``SaveImaged(writer=...)``."""

    def write(self, filename, verbose: bool = False, **kwargs) -> None:
        path = Path(filename)
        with atomic_path(path) as tmp:
            super().write(tmp, verbose=False, **kwargs)
        if verbose:
            logger.info(f"writing: {path}")


class AtomicStackWriter(ImageWriter):
    """Writes a ``(C, X, Y, Z)`` result, ``C = 1`` (mask, probabilities) or ``C = 3`` (RGB overlay), in the format of
    the input it came from, atomically:

    - NIfTI input (``.nii``, ``.nii.gz``): ``<stem>.nii.gz`` with the input's affine, qform/sform codes and units
      (nibabel); RGB as NIfTI RGB24;
    - TIFF input (``.tif``, ``.tiff``): a multi-page ``(Z, Y, X[, 3])`` TIFF ``<stem>.tif`` (ImageJ hyperstack), even for one page;
    - any other image (PNG, JPEG...): ``<stem>.png``, which needs ``Z = 1``.

    The input is ``meta["filename_or_obj"]``; the target name's suffix from ``SaveImaged(output_ext=...)`` is replaced.
    Arrays are written with the dtype ``SaveImaged`` passes (``output_dtype``, after ``scale``).
    """

    def __init__(self, output_dtype=np.uint8, scale: int | None = None, **kwargs) -> None:
        super().__init__(output_dtype=output_dtype, scale=scale, **kwargs)
        self.source = ""
        self.affine = None
        self.nifti_fields: dict[str, int] = {}

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs) -> None:
        array = np.asarray(data_array.detach().cpu() if hasattr(data_array, "detach") else data_array)
        rgb = False
        if channel_dim is not None:
            if array.shape[channel_dim] not in (1, 3):
                raise ValueError(f"AtomicStackWriter writes one channel or RGB, got shape {array.shape}.")
            rgb = array.shape[channel_dim] == 3
            array = np.moveaxis(array, channel_dim, -1) if rgb else np.take(array, 0, axis=channel_dim)
        if array.ndim - rgb == 2:  # (X, Y[, 3]) -> (X, Y, 1[, 3])
            array = array[:, :, None]
        self.data_obj = array  # (X, Y, Z) or (X, Y, Z, 3)

    def set_metadata(self, meta_dict: dict | None = None, resample: bool = False, **options) -> None:
        meta_dict = meta_dict or {}
        self.source = str(meta_dict.get("filename_or_obj", ""))
        # NIfTI header fields MONAI's NibabelReader put in the metadata: kept in a NIfTI output
        self.nifti_fields = {k: int(meta_dict[k]) for k in ("xyzt_units", "qform_code", "sform_code") if k in meta_dict}
        affine = meta_dict.get("original_affine", meta_dict.get("affine"))
        self.affine = None if affine is None else np.asarray(affine, dtype=np.float64)

    def _nifti(self, data: np.ndarray) -> nib.Nifti1Image:
        """``data`` (``(X, Y, Z)``, or ``(X, Y, Z, 3)`` as RGB24) with the input's affine, and its units and
        qform/sform codes when the metadata holds them."""
        affine = self.affine if self.affine is not None else np.eye(4)
        if data.ndim == 4:
            rgb = np.zeros(data.shape[:3], np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))
            for i, c in enumerate("RGB"):
                rgb[c] = data[..., i]
            data = rgb
        img = nib.Nifti1Image(data, affine)
        if "xyzt_units" in self.nifti_fields:
            img.header["xyzt_units"] = self.nifti_fields["xyzt_units"]
        for form in ("qform", "sform"):
            if f"{form}_code" in self.nifti_fields:
                getattr(img, f"set_{form}")(affine, code=self.nifti_fields[f"{form}_code"])
        return img

    def write(self, filename, verbose: bool = False, **kwargs) -> None:
        source = self.source.lower()
        target = Path(filename)
        # only the suffix SaveImaged added: ``sec.01.tif`` -> ``sec.01_seg.png`` -> ``sec.01_seg``
        stem = target.name[: -len(".nii.gz")] if target.name.lower().endswith(".nii.gz") else target.stem
        data = self.data_obj
        if self.scale:
            data = np.clip(data, 0.0, 1.0) * self.scale
        if self.output_dtype is not None:
            data = data.astype(self.output_dtype, copy=False)
        rgb = data.ndim == 4
        if source.endswith((".nii", ".nii.gz")):
            path = target.with_name(stem + ".nii.gz")
            save = lambda tmp: nib.save(self._nifti(data), tmp)
            tmp_suffix = ".nii.gz"
        elif source.endswith((".tif", ".tiff")):
            path = target.with_name(stem + ".tif")
            zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3) if rgb else (2, 1, 0)))
            save = lambda tmp: tifffile.imwrite(  # an ImageJ hyperstack: pages, never read as RGB unless it is
                tmp, zyx, imagej=True, photometric="rgb" if rgb else "minisblack", metadata={"axes": "ZYXS" if rgb else "ZYX"}
            )
            tmp_suffix = ".tif"
        else:
            if data.shape[2] != 1:
                raise ValueError(f"{self.source}: a {data.shape[2]}-page result cannot be written as one PNG.")
            path = target.with_name(stem + ".png")
            yx = np.ascontiguousarray(np.swapaxes(data[:, :, 0], 0, 1))
            save = lambda tmp: Image.fromarray(yx).save(tmp, format="PNG")
            tmp_suffix = ".png"
        with atomic_path(path, tmp_suffix) as tmp:
            save(str(tmp))
        if verbose:
            logger.info(f"writing: {path}")
