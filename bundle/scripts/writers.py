"""Atomic image writers: an interrupted run never leaves a half-written output file."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import tifffile
import torch
from monai.config import KeysCollection
from monai.data import ImageWriter, PILWriter
from monai.data.utils import create_file_basename
from monai.transforms import SaveImage, SaveImaged
from PIL import Image

from scripts import as_bool
from scripts.files import atomic_path, reverse_axes, write_text_atomic
from scripts.instances import object_table
from scripts.readers import array_stem

if TYPE_CHECKING:
    import zarr

__all__ = [
    "AtomicPILWriter",
    "AtomicStackWriter",
    "image_writer",
    "SaveObjectsd",
    "objects_csv_text",
    "create_zarr_output",
    "zarr_to_tiff",
]

logger = logging.getLogger(__name__)


def _csv_text(columns: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values(), strict=True))
    return out.getvalue()


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

    def _save(self, data: np.ndarray, tmp: str, suffix: str, rgb: bool) -> None:
        """Write ``data`` (``(X, Y, Z[, 3])``) to ``tmp`` in the format of ``suffix``."""
        if suffix == ".nii.gz":
            nib.save(self._nifti(data), tmp)
        elif suffix == ".tif":  # an ImageJ hyperstack: pages, never read as RGB unless it is
            zyx = reverse_axes(data, trailing=int(rgb), contiguous=True)
            photometric, axes = ("rgb", "ZYXS") if rgb else ("minisblack", "ZYX")
            tifffile.imwrite(tmp, zyx, imagej=True, photometric=photometric, metadata={"axes": axes})
        else:
            Image.fromarray(reverse_axes(data[:, :, 0], contiguous=True)).save(tmp, format="PNG")

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
            path, tmp_suffix = target.with_name(stem + ".nii.gz"), ".nii.gz"
        elif source.endswith((".tif", ".tiff")):
            path, tmp_suffix = target.with_name(stem + ".tif"), ".tif"
        else:
            if data.shape[2] != 1:
                raise ValueError(f"{self.source}: a {data.shape[2]}-page result cannot be written as one PNG.")
            path, tmp_suffix = target.with_name(stem + ".png"), ".png"
        with atomic_path(path, tmp_suffix) as tmp:
            self._save(data, str(tmp), tmp_suffix, rgb)
        if verbose:
            logger.info(f"writing: {path}")


def image_writer(stacks: bool | str = False) -> type[ImageWriter]:
    """The writer class of ``SaveImaged`` for the outputs: PNG (:class:`AtomicPILWriter`) for 2D images, or with
    ``stacks`` the input's own format (:class:`AtomicStackWriter`: NIfTI, TIFF stack or PNG)."""
    return AtomicStackWriter if as_bool(stacks) else AtomicPILWriter


@contextmanager
def _locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on POSIX) for a read-modify-write of a file in it by several
    processes, e.g. the ranks of ``multi_gpu_inference.json``; no lock where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: one process at a time
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class SaveObjectsd(SaveImaged):
    """Writes the objects of one input next to its mask, atomically, in ``output_dir``:

    - ``<stem>_instances.<ext>``: the instance ids under ``keys`` (``(1, *spatial)``, 0 background, ``1..N``) with
      ``writer`` (the input's format and orientation), 8-bit when N <= 255, else 16-bit (32-bit above 65535);
    - ``<stem>_objects.csv``: one row per object (:func:`scripts.instances.object_table`): ``id``, ``area`` (pixels or
      voxels), ``centroid_*`` and ``bbox_*_min/max`` in the file's axes (``y, x`` for images, ``z, y, x`` for stacks
      and volumes; max exclusive), ``equivalent_diameter`` (pixels), ``mean_intensity`` of ``image_key``, and for
      a NIfTI input ``volume_<unit>3`` (voxels times the header's voxel size, in its spatial unit, e.g. ``um``;
      ``volume`` when the header gives no unit);
      the header alone for an input without objects;
    - ``summary.csv``: ``image,objects``, one row per input of this and earlier runs into ``output_dir``, updated.

    A :class:`~monai.transforms.SaveImaged`, so that apps which drop the savers of a bundle's postprocessing (MONAI
    Label) drop it too.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        image_key: str | None = "image_raw",
        writer: type = AtomicPILWriter,
        output_ext: str = ".png",
    ) -> None:
        super().__init__(
            keys,
            output_dir=output_dir,
            output_postfix="instances",
            output_ext=output_ext,
            resample=False,
            separate_folder=False,
            print_log=False,
            writer=writer,
        )
        self.output_dir = output_dir
        self.image_key = image_key
        self.writer = writer
        self.output_ext = output_ext

    def _path(self, source: str, postfix: str, ext: str) -> Path:
        return Path(create_file_basename(postfix, source, self.output_dir, separate_folder=False) + ext)

    def _update_summary(self, source: str, count: int) -> None:
        path = Path(self.output_dir) / "summary.csv"
        with _locked(self.output_dir):  # processes of one torchrun inference share the file
            rows: dict[str, str] = {}
            if path.is_file():
                with open(path, newline="") as f:
                    rows = {r["image"]: r["objects"] for r in csv.DictReader(f) if "image" in r and "objects" in r}
            rows[os.path.basename(source)] = str(count)
            write_text_atomic(_csv_text({"image": list(rows), "objects": list(rows.values())}), path)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            instances = d[key]
            source = str(instances.meta["filename_or_obj"])
            ids = np.asarray(instances[0].detach().cpu()).astype(np.int64)
            count = int(ids.max(initial=0))
            dtype = np.uint8 if count <= 255 else np.uint16 if count <= 65535 else np.uint32
            save = SaveImage(
                output_dir=self.output_dir,
                output_postfix="instances",
                output_ext=self.output_ext,
                output_dtype=dtype,
                resample=False,
                scale=None,
                separate_folder=False,
                print_log=False,
                writer=self.writer,
            )
            save(instances)
            image = None
            if self.image_key is not None and self.image_key in d:
                image = reverse_axes(np.asarray(d[self.image_key][0].detach().cpu(), dtype=np.float64))
            spacing, unit = _voxel_size(instances.meta, ids.ndim)
            table = object_table(reverse_axes(ids), image, spacing)  # the file's axes: (y, x) or (z, y, x)
            write_text_atomic(objects_csv_text(table, ids.ndim, unit), self._path(source, "objects", ".csv"))
            self._update_summary(source, count)
        return d


_NIFTI_UNITS = {1: "m", 2: "mm", 3: "um"}


def _voxel_size(meta: Mapping, ndim: int) -> tuple[tuple[float, ...] | None, str]:
    """Voxel size in the file's axes (reversed MONAI axes) and its unit, from a NIfTI header's ``pixdim`` and
    ``xyzt_units`` in ``meta``; ``(None, "")`` for files without one (PNG, TIFF)."""
    if "pixdim" not in meta:
        return None, ""
    pixdim = np.asarray(meta["pixdim"], dtype=np.float64).ravel()[1 : ndim + 1]
    unit = _NIFTI_UNITS.get(int(np.asarray(meta.get("xyzt_units", 0)).ravel()[0]) & 7, "")
    return tuple(float(v) for v in pixdim[::-1]), unit


def objects_csv_text(table: dict, ndim: int, unit: str = "") -> str:
    """The text of ``<stem>_objects.csv`` from a table in :func:`scripts.instances.object_table`'s columns (``id``,
    ``area``, ``centroid-k``, ``bbox-k``, ``equivalent_diameter``, ``mean_intensity``, ``volume``; file axes): the
    axes named (``centroid_y``, ``bbox_x_max``...) and ``volume`` as ``volume_<unit>3``. The one schema of
    :class:`SaveObjectsd` and of block-wise runs (:mod:`scripts.blocks`)."""
    columns = _named_columns(table, ndim)
    if "volume" in columns and unit:
        columns[f"volume_{unit}3"] = columns.pop("volume")
    return _csv_text(columns)


def _named_columns(table: dict, ndim: int) -> dict:
    """``object_table`` columns with the file's axis names: ``centroid-0`` -> ``centroid_y`` (2D) or ``centroid_z``."""
    axes = ("y", "x") if ndim == 2 else ("z", "y", "x")
    names = {f"centroid-{i}": f"centroid_{a}" for i, a in enumerate(axes)}
    names.update({f"bbox-{i}": f"bbox_{a}_min" for i, a in enumerate(axes)})
    names.update({f"bbox-{i + ndim}": f"bbox_{a}_max" for i, a in enumerate(axes)})
    columns = {names.get(k, k): v for k, v in table.items()}
    columns["id"] = np.asarray(columns["id"]).astype(np.int64)
    for k in ("area",) + tuple(c for c in columns if c.startswith("bbox")):
        columns[k] = np.asarray(columns[k]).astype(np.int64)
    return {k: [_rounded(k, x) for x in v] for k, v in columns.items()}


def _rounded(column: str, x: object) -> float | int:
    """Pixel measures to 3 decimals, physical volumes (tiny in um^3 or mm^3) to 6 significant digits."""
    if not isinstance(x, (float, np.floating)):
        return int(x)  # type: ignore[call-overload]
    return float(f"{float(x):.6g}") if column == "volume" else round(float(x), 3)


# ---- block-wise outputs (scripts.blocks): zarr / OME-Zarr arrays written block by block, TIFF page by page ---------

OUTPUT_DTYPES = {"seg": "uint8", "prob": "float16", "instances": "uint32", "ids": "uint64"}


def create_zarr_output(target: Path, name: str, info: dict, shape: tuple, chunks: tuple) -> None:
    """An empty output array ``<stem>_<name>`` of ``shape`` and ``chunks`` (file axes) at ``target``, for an input
    described by ``info`` (:func:`scripts.readers.open_array`): an OME-Zarr image with the input's axes (channel and
    time dropped) and scale when the input was OME-Zarr, else a plain zarr array of the input's zarr format."""
    import zarr

    dtype = OUTPUT_DTYPES[name]
    if info["kind"] == "ome-zarr" and name != "ids":
        group = zarr.open_group(str(target), mode="w", zarr_format=info["zarr_format"])
        ms = json.loads(json.dumps(info["ome"]["multiscales"][0]))
        dataset = dict(ms["datasets"][0], path="0")
        keep = [i for i, a in enumerate(ms["axes"]) if a["name"].lower() not in ("c", "t")]
        ms["axes"] = [ms["axes"][i] for i in keep]
        for t in dataset.get("coordinateTransformations", []):
            for key in ("scale", "translation"):
                if key in t:
                    t[key] = [t[key][i] for i in keep]
        ms.update({"datasets": [dataset], "name": f"{array_stem(info['path'])}_{name}"})
        ms.pop("coordinateTransformations", None)
        attrs = {"multiscales": [ms]}
        group.attrs.update({"ome": dict(info["ome"], **attrs)} if info["ome_nested"] else attrs)
        group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    else:
        zarr.create_array(
            str(target), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=info["zarr_format"]
        )


def zarr_to_tiff(array: zarr.Array, path: Path) -> None:
    """Write ``array`` (``(Z, Y, X)`` or ``(Y, X)``) as a TIFF, one page at a time, atomically."""
    pages = array.shape[0] if array.ndim == 3 else 1

    def page_iter() -> Iterator[np.ndarray]:
        for z in range(pages):
            yield np.asarray(array[z] if array.ndim == 3 else array[:])

    shape = tuple(array.shape) if array.ndim == 3 else (1, *array.shape)
    imagej = np.dtype(array.dtype) in (np.uint8, np.uint16)
    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), page_iter(), shape=shape, dtype=array.dtype, imagej=imagej)
