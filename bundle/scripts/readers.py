"""Image-stack reader: 2D images and multi-page TIFF stacks as one ``(X, Y, Z)`` volume.

EM stacks come as multi-page TIFF files stored ``(Z, Y, X)`` (ImageJ, ISBI 2012); single images as PNG/TIFF/JPEG.
:class:`StackReader` reads both into the array order MONAI's readers use for volumes, ``(X, Y, Z)`` (a 2D image is a
stack of one page, ``Z = 1``), so the EM presets run one pipeline for images and stacks: the 2D preset segments each
page with a 2D network (``SliceInferer``), the 3D preset the whole volume. :class:`~scripts.writers.AtomicStackWriter`
writes the result back in the input's format. NIfTI volumes are read by MONAI's ``NibabelReader``.

Arrays larger than memory (zarr, OME-Zarr, TIFF through tifffile's zarr store) are opened lazily and read region by
region (:func:`open_array`, :func:`read_region`) for block-wise inference (:mod:`scripts.blocks`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys
from PIL import Image

from scripts import InputError, as_bool
from scripts.data import to_colour, to_grayscale
from scripts.files import reverse_axes

if TYPE_CHECKING:
    import zarr

__all__ = [
    "STACK_SUFFIXES",
    "StackReader",
    "read_stack",
    "image_reader",
    "ARRAY_SUFFIXES",
    "array_stem",
    "list_inputs",
    "open_array",
    "read_region",
    "chunk_shape",
    "spatial_shape",
    "missing_chunks",
]

STACK_SUFFIXES = ("tif", "tiff", "png", "jpg", "jpeg", "bmp")

logger = logging.getLogger(__name__)


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image or image stack as ``(Z, Y, X)`` (``Z = 1`` for one image); colour converted to gray.

    Raises:
        ValueError: naming ``path`` when the file cannot be decoded or does not hold 2D pages.
    """
    path = str(path)
    try:
        if Path(path).suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array = series.asarray()
                axes = series.axes
            if "S" in axes and axes.index("S") < axes.index("Y") and array.shape[axes.index("S")] in (3, 4):
                # what tifffile.imwrite writes for a (3|4, Y, X) array by default: sections, not colour
                array = np.moveaxis(array, axes.index("S"), -3).reshape(-1, *array.shape[-2:])
                logger.info(
                    f"{path}: one page of {array.shape[0]} planar samples, read as {array.shape[0]} sections (Z, Y, X)"
                )
            elif "S" in axes:  # RGB(A) samples: to gray like the 2D reader
                rgb = np.moveaxis(array, axes.index("S"), -1)
                if rgb.dtype == np.uint8:  # as the 2D reader does (PIL "L")
                    array = np.asarray(
                        [np.asarray(to_grayscale(Image.fromarray(p))) for p in rgb.reshape(-1, *rgb.shape[-3:])]
                    )
                else:  # 16-bit or float colour: the same ITU-R 601-2 luminance, in float, without losing the range
                    array = (rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).reshape(
                        -1, *rgb.shape[-3:-1]
                    )
        else:
            with Image.open(path) as im:
                array = np.asarray(to_grayscale(im))
    except Exception as e:  # tifffile and PIL raise many types for broken files
        raise ValueError(f"{path}: unreadable or truncated image ({type(e).__name__}: {e})") from e
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected 2D pages (a (Z, Y, X) stack), got an array of shape {array.shape}.")
    return array


class StackReader(ImageReader):
    """MONAI image reader for 2D images and multi-page TIFF stacks, returning ``(X, Y, Z)`` arrays.

    A single image gives ``Z = 1``. The affine is the identity (pixel units); ``meta["stack"]`` says whether the
    file held several pages. Use with ``LoadImaged(reader=StackReader())`` or with a list of readers.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return is_supported_format(filename, STACK_SUFFIXES)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> list[tuple[str, np.ndarray]]:
        files = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [(str(f), read_stack(f)) for f in files]

    def get_data(self, img: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, dict]:
        if len(img) != 1:
            raise ValueError("StackReader reads one file per sample.")
        filename, zyx = img[0]
        xyz = reverse_axes(zyx, contiguous=True)
        meta = {
            MetaKeys.AFFINE: np.eye(4),
            MetaKeys.ORIGINAL_AFFINE: np.eye(4),
            MetaKeys.SPATIAL_SHAPE: np.asarray(xyz.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "stack": zyx.shape[0] > 1,
        }
        return xyz, meta


def image_reader(
    stacks: bool | str = False, spatial_dims: int = 2, colour: bool | str = False
) -> ImageReader | list[ImageReader]:
    """The reader(s) of ``LoadImaged``: 2D images as grayscale ``(X, Y)`` (``PILReader``; with ``colour``, 8-bit
    colour images as ``(X, Y, 3)`` RGB, for training's stain augmentation), or, with ``stacks`` or ``spatial_dims``
    3, NIfTI volumes and TIFF/PNG stacks as ``(X, Y, Z)`` (``NibabelReader``, :class:`StackReader`).
    """
    if as_bool(stacks) or int(spatial_dims) == 3:
        return [NibabelReader(), StackReader()]
    return PILReader(converter=to_colour if as_bool(colour) else to_grayscale)


# ---- zarr / OME-Zarr / TIFF arrays, read lazily region by region (block-wise inference, scripts.blocks) --------------
# Arrays are in their file's axes, ``(Z, Y, X)`` or ``(Y, X)``; ``info`` (from :func:`open_array`) says how to read one.


def require_zarr():
    """The zarr module (zarr 3), or an error saying how to get it."""
    try:
        import zarr
    except ImportError as e:  # zarr 2 (Python 3.10) or none
        raise ImportError("block-wise inference needs zarr 3 (Python 3.11 or later): pip install 'zarr>=3'") from e
    return zarr


ARRAY_SUFFIXES = (".zarr", ".tif", ".tiff")


def array_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def list_inputs(path: str | os.PathLike) -> list[str]:
    """The arrays to segment: ``path`` itself when it is a ``.zarr`` folder or a TIFF file, else the ``.zarr``
    folders and TIFF files inside it, sorted; an error naming ``path`` when there are none."""
    p = Path(path)
    if p.name.lower().endswith(ARRAY_SUFFIXES) and p.exists():
        return [str(p)]
    if not p.is_dir():
        raise InputError(f"{p}: no such zarr array, TIFF file or folder.")
    found = sorted(
        str(c) for c in p.iterdir() if c.name.lower().endswith(ARRAY_SUFFIXES) and not c.name.startswith(".")
    )
    if not found:
        raise InputError(f"{p}: no .zarr arrays or TIFF files to segment block-wise.")
    return found


def _ome(attrs: dict) -> dict | None:
    """The OME-NGFF metadata of a group's attributes: ``attrs["ome"]`` (0.5) or the attributes themselves (0.4)."""
    ome = attrs.get("ome", attrs)
    return ome if isinstance(ome, dict) and "multiscales" in ome else None


def open_array(path: str | os.PathLike) -> tuple[zarr.Array, dict]:
    """Open ``path`` lazily: a zarr array, an OME-Zarr image (its first, full-resolution dataset) or a TIFF (through
    tifffile's zarr store, pages decoded only when read). Returns the array and ``info``: ``kind`` (``"zarr"``,
    ``"ome-zarr"`` or ``"tiff"``), ``ome`` (the OME metadata) and ``axes``. Errors name the file: not readable, not
    an image, or axes other than ``(Z, Y, X)`` / ``(Y, X)`` (singleton channel or time axes of OME-Zarr are
    accepted and dropped)."""
    zarr = require_zarr()
    p = Path(path)
    info: dict[str, Any] = {"path": str(p), "ome": None}
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            arr = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
            info["kind"] = "tiff"
        else:
            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group):
                ome = _ome(dict(node.attrs))
                if ome is None:
                    raise InputError(f"{p}: a zarr group without OME-Zarr 'multiscales' metadata; give the array.")
                info["ome"], info["kind"], info["ome_nested"] = ome, "ome-zarr", "ome" in dict(node.attrs)
                node = node[ome["multiscales"][0]["datasets"][0]["path"]]
            else:
                info["kind"] = "zarr"
            arr = node
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{p}: cannot be read as a zarr array or TIFF ({type(e).__name__}: {e}).") from e
    if isinstance(arr, zarr.Group):
        raise InputError(f"{p}: a zarr group where an image array was expected.")
    axes = [a["name"] for a in info["ome"]["multiscales"][0]["axes"]] if info["ome"] else None
    shape = tuple(arr.shape)
    if axes is not None:
        extra = [i for i, a in enumerate(axes) if a.lower() in ("c", "t")]
        if any(shape[i] != 1 for i in extra):
            raise InputError(f"{p}: axes {axes} with shape {shape}: only single-channel images can be segmented.")
        info["drop"] = tuple(extra)
        axes = [a for a in axes if a.lower() not in ("c", "t")]
    ndim = len(shape) - len(info.get("drop", ()))
    if ndim not in (2, 3):
        raise InputError(f"{p}: shape {shape}: expected 2 axes (Y, X) or 3 axes (Z, Y, X), got {len(shape)}.")
    info["axes"] = axes or (["y", "x"] if ndim == 2 else ["z", "y", "x"])
    info["zarr_format"] = getattr(arr.metadata, "zarr_format", 3) if info["kind"] != "tiff" else 3
    return arr, info


def read_region(arr: zarr.Array, info: dict, region: tuple[slice, ...]) -> np.ndarray:
    """``arr[region]`` (file axes without the dropped singleton axes)."""
    index: list[Any] = list(region)
    for i in info.get("drop", ()):
        index.insert(i, 0)
    return np.asarray(arr[tuple(index)])


def chunk_shape(arr: zarr.Array, info: dict) -> tuple[int, ...]:
    drop = info.get("drop", ())
    return tuple(int(c) for i, c in enumerate(arr.chunks) if i not in drop)


def spatial_shape(arr: zarr.Array, info: dict) -> tuple[int, ...]:
    drop = info.get("drop", ())
    return tuple(int(s) for i, s in enumerate(arr.shape) if i not in drop)


def missing_chunks(arr: zarr.Array, info: dict, region: tuple[slice, ...]) -> list[tuple[int, ...]]:
    """Chunk coordinates (full array axes) under ``region`` that the zarr store lacks (empty for TIFF inputs)."""
    if info["kind"] == "tiff":
        return []
    chunks, index = list(arr.chunks), list(region)
    for i in info.get("drop", ()):
        index.insert(i, slice(0, 1))
    ranges = [range(s.start // c, math.ceil(s.stop / c)) for s, c in zip(index, chunks, strict=True)]
    lacking = []
    prefix = f"{arr.path}/" if arr.path else ""
    require_zarr()
    from zarr.core.sync import sync

    for coords in np.ndindex(*[len(r) for r in ranges]):
        c = tuple(r[i] for r, i in zip(ranges, coords, strict=True))
        if not sync(arr.store.exists(prefix + arr.metadata.encode_chunk_key(c))):
            lacking.append(c)
    return lacking
