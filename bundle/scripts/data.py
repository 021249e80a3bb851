"""Data preparation: DSB2018 original layout -> one grayscale image and one binary label per sample, datalists.

DSB2018 ``stage1_train`` keeps ``<root>/<id>/images/<id>.png`` (RGBA) and one PNG per nucleus in
``<root>/<id>/masks/``. :func:`prepare_dsb2018` writes, as in the paper (section V.A),

- ``<out>/images/<id>.png``: the image converted to 8-bit grayscale,
- ``<out>/labels/<id>.png``: the instance label image of its nucleus masks, 0 background and ``1..N`` one id per
  nucleus (8-bit PNG, 16-bit when N > 255; where masks overlap the later one wins); the nucleus mask is ``label > 0``,
- ``<out>/datalist.json``: ``{"training": [...], "validation": [...]}`` with paths relative to ``<out>``, a seeded split
  stratified by image type (``fluorescence``, ``brightfield`` gray, ``colour`` such as H&E).

Command line: ``python -m scripts.prepare dsb2018 --src <stage1_train> --out <dir> [--fixes <fixes dir>]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist, partition_dataset_classes
from PIL import Image

from scripts import InputError, MissingInputError
from scripts.files import atomic_path, reverse_axes, save_png_atomic, write_json_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "to_grayscale",
    "image_group",
    "to_colour",
    "prepare_dsb2018",
    "prepare_isbi2012",
    "prepare_vnc",
    "prepare_folders",
    "split_datalist",
    "load_datalist",
    "list_images",
    "group_sampler",
    "drop_last",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz")
GROUPS = ("fluorescence", "brightfield", "colour")


def to_grayscale(img: Image.Image) -> Image.Image:
    """PIL converter to one channel: 8-bit colour (RGB, RGBA, palette, LA) to luminance ``L`` (ITU-R 601-2);
    16-bit and 32-bit integer or float images to float ``F`` so that no intensity range is lost."""
    if img.mode in ("L", "F"):
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img.convert("I").convert("F") if img.mode != "I" else img.convert("F")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("L")


def to_colour(img: Image.Image) -> Image.Image:
    """PIL converter that keeps colour: 8-bit colour (RGB, RGBA, palette, LA) to ``RGB``, every other mode as
    :func:`to_grayscale`. Training reads images with it so that :class:`scripts.transforms.RandStainGrayd` can
    jitter the stains before the gray conversion."""
    if img.mode in ("RGB", "RGBA", "P", "PA", "LA", "CMYK", "YCbCr"):
        return img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")
    return to_grayscale(img)


def image_group(rgb: np.ndarray) -> str:
    """Image type of an ``(H, W, 3)`` uint8 image: ``colour`` if channels differ (H&E, brightfield stains),
    otherwise ``fluorescence`` for a dark background and ``brightfield`` for a light one."""
    rgb = rgb.astype(np.int16)
    if np.abs(rgb[..., 0] - rgb[..., 1]).mean() > 1 or np.abs(rgb[..., 1] - rgb[..., 2]).mean() > 1:
        return "colour"
    return "fluorescence" if np.median(rgb[..., 0]) < 100 else "brightfield"


def _convert_one(sample_dir: Path, out: Path) -> dict:
    sid = sample_dir.name
    image_file = sample_dir / "images" / f"{sid}.png"
    try:
        with Image.open(image_file) as im:
            rgb = np.asarray(im.convert("RGB"))
            gray = np.asarray(to_grayscale(im))
    except (OSError, ValueError) as e:
        raise ValueError(f"{image_file}: cannot read the image ({e}).") from e
    mask_files = sorted((sample_dir / "masks").glob("*.png"))
    if not mask_files:
        raise ValueError(f"{sample_dir / 'masks'}: no nucleus masks for image {sid}.")
    label = np.zeros(gray.shape, dtype=np.uint16)
    for index, mf in enumerate(mask_files, start=1):
        try:
            with Image.open(mf) as m:
                mask = np.asarray(m.convert("L")) > 0
        except (OSError, ValueError) as e:
            raise ValueError(f"{mf}: cannot read the mask ({e}).") from e
        if mask.shape != label.shape:
            raise ValueError(f"{mf}: mask size {mask.shape} differs from image size {label.shape} of {image_file}.")
        label[mask] = index
    group = image_group(rgb)
    # colour images keep their colour (stain augmentation in training; the readers of inference convert to gray)
    save_png_atomic(rgb if group == "colour" else gray.astype(np.uint8), out / "images" / f"{sid}.png")
    save_png_atomic(label if len(mask_files) > 255 else label.astype(np.uint8), out / "labels" / f"{sid}.png")
    return {"image": f"images/{sid}.png", "label": f"labels/{sid}.png", "id": sid, "group": group}


def prepare_dsb2018(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fixes: str | os.PathLike | None = None,
    ids: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Convert DSB2018 ``stage1_train`` at ``src`` into ``out`` and write ``out/datalist.json``.

    Args:
        src: the ``stage1_train`` folder (one sub-folder per image id).
        out: output folder.
        fixes: optional community fixes folder (``stage1_train/<id>/`` replacement folders and ``removed_ids.txt``);
            a fixed folder replaces the original one and removed ids are dropped.
        ids: convert only these ids (default: all).
        val_fraction: share of images in the validation split.
        seed: seed of the split.
        progress: show a progress bar.

    Returns:
        the datalist written to ``out/datalist.json``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"DSB2018 folder not found: {src}")
    folders = {p.name: p for p in sorted(src.iterdir()) if p.is_dir()}
    if fixes is not None:
        fixes = Path(fixes)
        fixed_root = fixes / "stage1_train" if (fixes / "stage1_train").is_dir() else fixes
        for p in sorted(fixed_root.iterdir()):
            if p.is_dir() and p.name in folders:
                folders[p.name] = p
        removed_file = fixes / "removed_ids.txt"
        if removed_file.is_file():
            for rid in removed_file.read_text().split():
                folders.pop(rid, None)
    if ids is not None:
        missing = sorted(set(ids) - set(folders))
        if missing:
            raise ValueError(f"ids not found in {src}: {missing}")
        folders = {k: folders[k] for k in ids}
    if not folders:
        raise ValueError(f"no image folders found in {src}.")
    items = []
    iterator = folders.values()
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(folders), desc="prepare DSB2018")
    for folder in iterator:
        items.append(_convert_one(folder, out))
    datalist = split_datalist(items, val_fraction=val_fraction, seed=seed)
    write_json_atomic(datalist, out / "datalist.json")
    logger.info(
        f"wrote {len(datalist['training'])} training and {len(datalist['validation'])} validation samples to {out}"
    )
    return datalist


def prepare_folders(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> dict[str, list[dict]]:
    """A ``datalist.json`` in ``out`` for your own data: every image file in ``images`` paired with the mask of the
    same name (any image suffix, optionally ending in ``_mask``, ``_label`` or ``_seg``) in ``labels``; a seeded
    ``val_fraction`` of the pairs for validation. Paths are written relative to ``out``. Images without a mask,
    masks without an image, and two masks for one image are errors that name the files."""
    images, labels, out = Path(images), Path(labels), Path(out)
    for what, folder in (("--images", images), ("--labels", labels)):
        if not folder.is_dir():
            raise MissingInputError(f"{what} folder not found: {folder}")

    def stem(path: Path, strip: tuple[str, ...] = ()) -> str:
        name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
        return next((name[: -len(s)] for s in strip if name.endswith(s)), name)

    image_files = {stem(Path(p["image"])): Path(p["image"]) for p in list_images(images, suffixes)}
    label_files: dict[str, list[Path]] = {}
    for it in list_images(labels, suffixes):
        label_files.setdefault(stem(Path(it["image"]), ("_mask", "_label", "_seg")), []).append(Path(it["image"]))
    twice = {k: v for k, v in label_files.items() if len(v) > 1 and k in image_files}
    if twice:
        k, v = next(iter(twice.items()))
        raise InputError(
            f"{len(twice)} image(s) with more than one mask, e.g. {image_files[k]}: {', '.join(map(str, v))}"
        )
    missing = sorted(set(image_files) - set(label_files))
    if missing:
        raise InputError(
            f"{len(missing)} image(s) without a mask of the same name in {labels}, e.g. {image_files[missing[0]]}"
        )
    unused = sorted(set(label_files) - set(image_files))
    if unused:
        logger.warning(
            f"{len(unused)} mask(s) without an image in {images}, not used: e.g. {label_files[unused[0]][0]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    items = [
        {"image": os.path.relpath(image_files[k], out), "label": os.path.relpath(label_files[k][0], out), "id": k}
        for k in sorted(image_files)
    ]
    if len(items) < 2:
        raise InputError(f"{images}: {len(items)} image(s) with masks; a training and a validation split need two.")
    datalist = split_datalist(items, val_fraction=val_fraction, seed=seed)
    if not datalist["validation"]:  # a tiny set: at least one validation image
        datalist["validation"] = [datalist["training"].pop()]
    write_json_atomic(datalist, out / "datalist.json")
    return datalist


def split_datalist(items: list[dict], val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[dict]]:
    """Seeded train/validation split, stratified by the items' ``group`` key when present."""
    if not items:
        raise ValueError("cannot split an empty datalist.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    groups = [it.get("group", "all") for it in items]
    names = sorted(set(groups))
    train, val = partition_dataset_classes(
        items,
        classes=[names.index(g) for g in groups],
        ratios=[1 - val_fraction, val_fraction],
        shuffle=True,
        seed=seed,
    )
    return {"training": train, "validation": val}


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[dict]:
    """Read the ``key`` list (``"training"`` or ``"validation"``) of a datalist JSON.

    The file holds ``{"training": [...], "validation": [...]}`` (Decathlon style) or a plain ``[{"image", "label"}]``
    list, which is split with :func:`split_datalist` (``val_fraction``, ``seed``) so that validation never sees
    training images. Relative paths are resolved against ``base_dir`` (default: the file's folder).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"datalist not found: {path}")
    with open(path) as f:
        content = json.load(f)
    base_dir = Path(base_dir) if base_dir is not None else path.parent
    if isinstance(content, list):  # a plain list of samples
        items = [
            {k: str(base_dir / v) if k in ("image", "label") and not os.path.isabs(v) else v for k, v in it.items()}
            for it in content
        ]
        data = split_datalist(items, val_fraction=val_fraction, seed=seed)[key]
    elif key in content:
        data = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=str(base_dir))
    else:
        raise InputError(f"{path} has no {key!r} list (keys: {sorted(content)}).")
    if not data:
        raise InputError(f"{path}: the {key!r} list is empty.")
    return data


# working memory of whole-image inference per pixel (voxel), from the 4096x4096 slide of docs/blocks.md (2.4 GB
# peak, 0.7 GB of it the process), with a margin for fp32: an input above the available memory goes block-wise
WHOLE_IMAGE_BYTES_PER_PIXEL = 160
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def _blocks_command(path: Path) -> str:
    return (
        "run it block by block with configs/blocks.json: python -m monai.bundle run --config_file "
        f"\"['configs/inference.json','configs/blocks.json']\" --dataset_dir {path} --output_dir <out> (an EM preset "
        "such as configs/em3d.json goes before blocks.json; docs/blocks.md)"
    )


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any((path / m).exists() for m in ZARR_MARKERS))


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux, else the physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _tiff_pixels(path: Path) -> int:
    """Pixels of a TIFF's first series from its header (0 when tifffile cannot tell; the input check names it)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(np.prod(tif.series[0].shape))
    except Exception:  # tifffile raises many types for broken files; the input check reports them
        return 0


def list_images(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[dict]:
    """``[{"image": path}]`` for every image file directly inside ``folder`` (sorted), for inference.

    Raises:
        InputError: for a zarr / OME-Zarr array (``folder`` itself, or in a folder without image files) and for a
            TIFF whose whole-image inference would not fit in the available memory, with the block-wise command.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"input folder not found: {folder} (--dataset_dir)")
    if _is_zarr(folder):
        raise InputError(
            f"{folder} is a zarr array, which inference.json does not read whole: {_blocks_command(folder)}"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(tuple(suffixes)))
    arrays = sorted(p for p in folder.iterdir() if _is_zarr(p))
    if not files:
        if arrays:
            raise InputError(
                f"no image files ({', '.join(suffixes)}) in {folder}, but zarr arrays ({', '.join(p.name for p in arrays)}): "
                + _blocks_command(arrays[0])
            )
        raise InputError(f"no image files ({', '.join(suffixes)}) in {folder}.")
    if arrays:
        logger.warning(
            f"{folder}: zarr arrays left out ({', '.join(p.name for p in arrays)}); {_blocks_command(arrays[0])}"
        )
    memory = available_memory()
    for p in files:
        if p.suffix.lower() in (".tif", ".tiff"):
            need = _tiff_pixels(p) * WHOLE_IMAGE_BYTES_PER_PIXEL
            if need > memory:
                raise InputError(
                    f"{p}: too large for whole-image inference (about {need / 2**30:.1f} GB needed, "
                    f"{memory / 2**30:.1f} GB available); {_blocks_command(p)}"
                )
    return [{"image": str(p)} for p in files]


def group_sampler(items: Sequence[dict], power: float = 0.5, seed: int = 0):
    """A ``WeightedRandomSampler`` that draws each sample with weight ``1 / n_group ** power`` (``n_group``: samples
    of its ``group``, e.g. fluorescence, brightfield, colour), so that rare image types are seen more often:
    ``power=1`` balances the groups. One epoch draws ``len(items)`` samples with replacement. ``power=0`` (uniform)
    gives ``None``: the loader shuffles instead."""
    import torch

    if not float(power):
        return None
    groups = [it.get("group", "all") for it in items]
    counts = Counter(groups)
    weights = torch.tensor([counts[g] ** -power for g in groups], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(
        weights, num_samples=len(items), replacement=True, generator=torch.Generator().manual_seed(seed)
    )


def drop_last(dataset: Sequence, sampler: Sequence | None, batch_size: int) -> bool:
    """Drop the last incomplete batch of an epoch, unless the samples an epoch draws (``sampler``'s, else
    ``dataset``'s: per process under torchrun) are fewer than a batch, which then trains as one smaller batch
    (MONAI would otherwise skip an empty loader)."""
    return len(dataset if sampler is None else sampler) >= int(batch_size)


def _isbi_pages(src: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """ISBI 2012 slices from the challenge's TIFF stacks (``train-volume.tif``, ``train-labels.tif``,
    ``test-volume.tif``) or from one PNG per slice (``train/image/<k>.png``, ``train/label/<k>.png``, ``test/<k>.png``):
    ``(images, labels, test images)``, each a list of ``(Y, X)`` uint8 pages in z order."""
    import tifffile

    def pngs(folder: Path) -> list[np.ndarray]:
        files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
        return [np.asarray(Image.open(f).convert("L")) for f in files]

    if (src / "train-volume.tif").is_file():
        images = list(tifffile.imread(src / "train-volume.tif"))
        labels = list(tifffile.imread(src / "train-labels.tif"))
        test = list(tifffile.imread(src / "test-volume.tif")) if (src / "test-volume.tif").is_file() else []
    elif (src / "train" / "image").is_dir():
        images, labels = pngs(src / "train" / "image"), pngs(src / "train" / "label")
        test = pngs(src / "test") if (src / "test").is_dir() else []
    else:
        raise FileNotFoundError(f"{src}: neither train-volume.tif nor train/image/ (ISBI 2012 layouts) found.")
    if not images or len(images) != len(labels):
        raise ValueError(
            f"{src}: {len(images)} training slices and {len(labels)} label slices; expected equal, non-zero."
        )
    for k, (im, lb) in enumerate(zip(images, labels, strict=True)):
        if im.shape != lb.shape:
            raise ValueError(f"{src}: slice {k}: label size {lb.shape} differs from image size {im.shape}.")
    return images, labels, test


def prepare_isbi2012(
    src: str | os.PathLike, out: str | os.PathLike, val_slices: Sequence[int] = (20, 21, 22, 23, 24)
) -> dict[str, list[dict]]:
    """Convert ISBI 2012 (ssTEM, Drosophila larva VNC, 512x512 slices) into the bundle's layout, membrane as foreground.

    The challenge labels membranes 0 and cell interior 255; this writes ``<out>/labels/slice_<k>.png`` with
    **membrane = 255**, the class that matters for connectomics, ``<out>/images/slice_<k>.png``, the unlabelled test
    slices as ``<out>/test/test_<k>.png`` and ``<out>/datalist.json`` with ``training``, ``validation`` (whole slices
    ``val_slices``, default the last five of the 25 public ones, never trained on) and ``test`` (images only).
    """
    src, out = Path(src), Path(out)
    images, labels, test = _isbi_pages(src)
    missing = sorted(set(val_slices) - set(range(len(images))))
    if missing:
        raise ValueError(f"val_slices {missing} are not among the {len(images)} labelled slices of {src}.")
    datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for k, (im, lb) in enumerate(zip(images, labels, strict=True)):
        name = f"slice_{k:02d}"
        save_png_atomic(im.astype(np.uint8), out / "images" / f"{name}.png")
        save_png_atomic(np.where(lb > 127, 0, 255).astype(np.uint8), out / "labels" / f"{name}.png")
        item = {"image": f"images/{name}.png", "label": f"labels/{name}.png", "id": name}
        datalist["validation" if k in val_slices else "training"].append(item)
    for k, im in enumerate(test):
        save_png_atomic(im.astype(np.uint8), out / "test" / f"test_{k:02d}.png")
        datalist["test"].append({"image": f"test/test_{k:02d}.png", "id": f"test_{k:02d}"})
    write_json_atomic(datalist, out / "datalist.json")
    logger.info(
        f"ISBI 2012: {len(datalist['training'])} training, {len(datalist['validation'])} validation slices in {out}"
    )
    return datalist


VNC_SPACING_UM = (0.0046, 0.0046, 0.05)  # x, y in-plane and z section thickness of the ssTEM stack, micrometres


def prepare_vnc(
    src: str | os.PathLike,
    out: str | os.PathLike,
    target: str = "mitochondria",
    val_sections: Sequence[int] = (10, 11, 12, 13, 14, 15),
) -> dict[str, dict[str, list[dict]]]:
    """Convert an ssTEM stack of the Drosophila VNC dataset (``raw/NN.tif`` and ``<target>/NN.png`` per section,
    ``target`` one of ``mitochondria``, ``membranes``, ``synapses``; binarised with ``> 0``) for 2D and 3D training.

    Writes, with the sections ``val_sections`` (default the last six of stack1's 16) for validation only:

    - ``<out>/volumes/``: ``images/{training,validation}.nii.gz`` and ``labels/...`` (``(X, Y, Z)``, 255 = target,
      affine of :data:`VNC_SPACING_UM`), and ``datalist.json``, for the 3D preset;
    - ``<out>/slices/``: one PNG per section in ``images/`` and ``labels/`` and ``datalist.json``, for a 2D network
      trained and validated on the same sections.

    The dataset is CC BY-NC-SA 3.0: prepared copies are for non-commercial research and must not be redistributed
    in this repository (see ``docs/data_license.txt``).
    """
    import nibabel as nib
    import tifffile

    src, out = Path(src), Path(out)
    raw_files = sorted((src / "raw").glob("*.tif"))
    if not raw_files:
        raise FileNotFoundError(f"{src / 'raw'}: no section TIFFs (expected the stack's raw/NN.tif).")
    sections, masks = [], []
    for f in raw_files:
        mask_file = src / target / f"{f.stem}.png"
        if not mask_file.is_file():
            raise FileNotFoundError(f"{mask_file}: no {target} mask for section {f.name}.")
        image = tifffile.imread(f)
        mask = np.asarray(Image.open(mask_file)) > 0
        if mask.ndim == 3:
            mask = mask.any(-1)
        if image.shape != mask.shape:
            raise ValueError(f"{mask_file}: mask size {mask.shape} differs from image size {image.shape} of {f}.")
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{f}: {image.dtype} pixels; expected 8- or 16-bit gray sections.")
        sections.append(image)  # 8- or 16-bit as stored (a cast to 8 bits would wrap 16-bit values)
        masks.append(mask.astype(np.uint8) * 255)
    missing = sorted(set(val_sections) - set(range(len(sections))))
    if missing:
        raise ValueError(f"val_sections {missing} are not among the {len(sections)} sections of {src}.")
    split = {"training": [k for k in range(len(sections)) if k not in val_sections], "validation": list(val_sections)}
    affine = np.diag([*VNC_SPACING_UM, 1.0])
    volumes: dict[str, list[dict]] = {}
    slices: dict[str, list[dict]] = {"training": [], "validation": []}
    for key, ks in split.items():
        for kind, stack in (("images", sections), ("labels", masks)):
            xyz = reverse_axes(np.stack([stack[k] for k in ks]), contiguous=True)
            path = out / "volumes" / kind / f"{key}.nii.gz"
            img = nib.Nifti1Image(xyz, affine)
            img.header.set_xyzt_units("micron")
            with atomic_path(path, ".nii.gz") as tmp:
                nib.save(img, str(tmp))
        volumes[key] = [{"image": f"images/{key}.nii.gz", "label": f"labels/{key}.nii.gz", "id": key, "sections": ks}]
        for k in ks:
            name = raw_files[k].stem
            save_png_atomic(sections[k], out / "slices" / "images" / f"{name}.png")
            save_png_atomic(masks[k], out / "slices" / "labels" / f"{name}.png")
            slices[key].append({"image": f"images/{name}.png", "label": f"labels/{name}.png", "id": name})
    write_json_atomic(volumes, out / "volumes" / "datalist.json")
    write_json_atomic(slices, out / "slices" / "datalist.json")
    logger.info(
        f"VNC {target}: sections {split['training']} for training, {split['validation']} for validation in {out}"
    )
    return {"volumes": volumes, "slices": slices}
