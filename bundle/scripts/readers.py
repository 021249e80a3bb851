"""Image-stack reader: 2D images and multi-page TIFF stacks as one ``(X, Y, Z)`` volume.

EM stacks come as multi-page TIFF files stored ``(Z, Y, X)`` (ImageJ, ISBI 2012); single images as PNG/TIFF/JPEG.
:class:`StackReader` reads both into the array order MONAI's readers use for volumes, ``(X, Y, Z)`` (a 2D image is a
stack of one page, ``Z = 1``), so the EM presets run one pipeline for images and stacks: the 2D preset segments each
page with a 2D network (``SliceInferer``), the 3D preset the whole volume. :class:`~scripts.writers.AtomicStackWriter`
writes the result back in the input's format. NIfTI volumes are read by MONAI's ``NibabelReader``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys
from PIL import Image

from scripts import as_bool
from scripts.data import to_colour, to_grayscale
from scripts.files import reverse_axes

__all__ = ["STACK_SUFFIXES", "StackReader", "read_stack", "image_reader"]

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
