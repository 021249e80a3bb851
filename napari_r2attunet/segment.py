"""One image or stack through a preset of the bundle, in this process: the array is written losslessly into a
temporary folder, the preset's inference config runs on it (``monai.bundle``'s ``ConfigWorkflow``, as
``python -m monai.bundle run --config_file "[configs/inference.json, <preset files>]"`` would), and its outputs are read
back: the binary mask (``<stem>_seg``), the instance ids (``<stem>_instances``) and the objects table
(``<stem>_objects.csv``)."""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = ["Segmentation", "bundle_dir", "presets", "segment"]

STEM = "image"


@dataclass
class Segmentation:
    """What the bundle wrote for one input, in the input's axes (``(Y, X)`` or ``(Z, Y, X)``): ``mask`` 0/1,
    ``instances`` 0 background and ``1..N`` (``None`` where the preset makes no objects), ``objects`` the table's
    columns (``id``, ``area``, centroids, boxes, ...), empty without objects."""

    mask: np.ndarray
    instances: np.ndarray | None = None
    objects: dict[str, np.ndarray] = field(default_factory=dict)


def bundle_dir(path: str | os.PathLike | None = None) -> Path:
    """The bundle to run: ``path``, else ``$R2ATTUNET_BUNDLE``, else the ``bundle/`` folder next to this package
    (a clone of the repository, installed with ``pip install -e``). Raises ``FileNotFoundError`` naming what is
    missing."""
    root = Path(path or os.environ.get("R2ATTUNET_BUNDLE") or Path(__file__).resolve().parents[1] / "bundle")
    if not (root / "configs" / "inference.json").is_file():
        raise FileNotFoundError(
            f"{root}: not an R2AttU-Net bundle (no configs/inference.json); set R2ATTUNET_BUNDLE or choose the folder "
            "of a downloaded bundle (python -m monai.bundle download --name r2attunet_microscopy_segmentation)"
        )
    return root


def _import_bundle(root: Path) -> None:
    """Make the bundle's ``scripts`` package importable: its configs name components as ``scripts.<module>``."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def presets(bundle: str | os.PathLike | None = None) -> list[str]:
    """The preset names of the bundle (``scripts.presets.PRESETS``): nuclei, em2d, em3d, em2d_mito."""
    _import_bundle(bundle_dir(bundle))
    from scripts.presets import PRESETS

    return list(PRESETS)


def _write_input(image: np.ndarray, preset: str, folder: Path) -> Path:
    """``image`` as a file the preset's reader reads back unchanged: PNG for 8-bit 2D gray or RGB(A), TIFF else."""
    image = np.asarray(image)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8
    if preset == "nuclei" and image.ndim != 2 and not rgb:
        raise ValueError(f"the nuclei preset segments 2D images, got an array of shape {image.shape}")
    if preset == "nuclei" and (image.dtype == np.uint8 or rgb):
        path = folder / f"{STEM}.png"
        Image.fromarray(image).save(path)
        return path
    if rgb and preset != "nuclei":
        raise ValueError("the EM presets segment gray images or stacks, got an RGB image")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a (Y, X) image or a (Z, Y, X) stack, got an array of shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        image = image.astype(np.float32)
    path = folder / f"{STEM}.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    return path


def _read_output(folder: Path, postfix: str) -> np.ndarray | None:
    found = sorted(folder.glob(f"{STEM}_{postfix}.*"))
    if not found:
        return None
    if found[0].suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(found[0])
    with Image.open(found[0]) as im:
        return np.asarray(im)


def _read_table(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}
    table = {}
    for key, values in columns.items():
        try:
            table[key] = np.asarray(values, dtype=np.int64 if key == "id" else np.float64)
        except ValueError:
            table[key] = np.asarray(values)
    return table


def segment(image: np.ndarray, preset: str = "nuclei", bundle: str | os.PathLike | None = None) -> Segmentation:
    """Segment ``image`` (``(Y, X)``, ``(Y, X, 3)`` RGB, or ``(Z, Y, X)`` for the EM presets) with ``preset`` of
    the bundle at ``bundle`` (see :func:`bundle_dir`), exactly as its inference command does on the same pixels."""
    root = bundle_dir(bundle)
    _import_bundle(root)
    from monai.bundle import ConfigWorkflow

    from scripts.presets import config_files

    files = config_files(preset, root)  # an unknown preset stops here
    with tempfile.TemporaryDirectory(prefix="r2attunet-napari-") as tmp:
        inputs, outputs = Path(tmp) / "images", Path(tmp) / "outputs"
        inputs.mkdir()
        _write_input(image, preset, inputs)
        workflow = ConfigWorkflow(
            config_file=files,
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=None,
            workflow_type="infer",
            bundle_root=str(root),
            dataset_dir=str(inputs),
            output_dir=str(outputs),
            progress_bar=False,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        mask = _read_output(outputs, "seg")
        if mask is None:
            raise RuntimeError(f"the {preset} preset wrote no mask into {outputs}")
        return Segmentation(
            mask=(mask > 0).astype(np.uint8),
            instances=_read_output(outputs, "instances"),
            objects=_read_table(outputs / f"{STEM}_objects.csv"),
        )
