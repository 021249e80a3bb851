"""Dataset and input checks: every problem named with its file, before any compute is spent.

Command line (from the bundle root)::

    python -m scripts.check datalist --datalist sample_data/dsb2018/datalist.json   # prepared data, both splits
    python -m scripts.check dsb2018 --src data/dsb2018/stage1_train                 # DSB2018 original layout
    python -m scripts.check images --folder /path/to/images                         # inference inputs
    ... --stacks true                                                               # EM: TIFF stacks, NIfTI volumes

Each prints one report listing every problem with the file's path and exits non-zero when a sample is unusable.
Training runs the same check (``train.json``: ``train_datalist``, ``val_datalist``) and refuses invalid data unless
``--skip_bad_samples true``, in which case it says what it skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fire
import numpy as np
from monai.data.utils import create_file_basename
from PIL import Image

from scripts import InputError, as_bool
from scripts.data import list_images, load_datalist

__all__ = ["Problem", "check_image", "check_datalist", "check_dsb2018", "validated", "checked_split", "InputCheck"]

logger = logging.getLogger(__name__)

MIN_SIZE = 8  # pixels per side; smaller images cannot hold a nucleus or a pooling pyramid
MAX_CHANNELS = 4  # gray, gray + alpha, RGB, RGBA


@dataclass(frozen=True)
class Problem:
    """A problem with one file. ``fatal`` problems make the sample unusable; the others are notes."""

    path: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{'ERROR' if self.fatal else 'note '} {self.path}: {self.message}"


VOLUME_SUFFIXES = (".nii", ".nii.gz")
STACK_SUFFIXES = (".tif", ".tiff")


def _read(path: str, stacks: bool = False) -> tuple[np.ndarray | None, str, Problem | None]:
    """Decode a whole image (catching truncated files): ``(array, PIL mode, problem)``.

    2D images give ``(H, W[, C])`` arrays. Multi-page TIFF stacks give ``(Z, Y, X)`` and NIfTI volumes their stored
    array; with ``stacks=False`` (2D configs) they are a problem, with ``stacks=True`` (EM presets) they are read.
    """
    if not os.path.isfile(path):
        return None, "", Problem(path, "file not found")
    lower = path.lower()
    try:
        if lower.endswith(VOLUME_SUFFIXES):
            import nibabel as nib

            array = np.asanyarray(nib.load(path).dataobj)
            if not stacks:
                return (
                    array,
                    "",
                    Problem(
                        path,
                        f"a volume of shape {array.shape} where a 2D image is expected (use the 3D preset configs/em3d.json)",
                    ),
                )
            if array.ndim != 3:
                return (
                    array,
                    "",
                    Problem(path, f"a volume of shape {array.shape}; expected 3 spatial dimensions (X, Y, Z)"),
                )
            return array, "", None
        if stacks and lower.endswith(STACK_SUFFIXES):
            from scripts.readers import read_stack

            array = read_stack(path)
            return (array[0] if array.shape[0] == 1 else array), "", None
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            n_frames = getattr(im, "n_frames", 1)
            array = np.asarray(im)
    except Exception as e:  # PIL, tifffile and nibabel raise OSError, SyntaxError, ValueError... for broken files
        if str(e).startswith(f"{path}: "):  # read_stack's own message already names the file
            return None, "", Problem(path, str(e)[len(path) + 2 :])
        return None, "", Problem(path, f"unreadable or truncated image ({type(e).__name__}: {e})")
    if n_frames > 1:
        return (
            array,
            mode,
            Problem(
                path,
                f"a stack of {n_frames} pages where a 2D image is expected (the EM presets "
                "configs/em2d.json and configs/em3d.json segment stacks; to train a 2D preset on "
                "stacks, split them into sections with python -m scripts.prepare vnc, or train "
                "configs/em3d.json on them)",
            ),
        )
    return array, mode, None


def check_image(path: str, stacks: bool = False) -> tuple[list[Problem], tuple[int, ...] | None]:
    """Problems of one 2D image (or, with ``stacks``, image stack or volume) and its size: ``(H, W)`` for an image,
    the array shape for a stack or volume (``None`` if unreadable)."""
    array, mode, problem = _read(path, stacks)
    if array is None:
        return [problem], None
    if problem:  # a stack or volume where a 2D image is expected, or a volume of other than 3 dimensions
        return [problem], tuple(array.shape)
    problems = []
    # TIFF stacks are read as gray (Z, Y, X) pages, so 3 dimensions are a stack whatever the page count
    if (
        stacks
        and array.ndim == 3
        and (path.lower().endswith(VOLUME_SUFFIXES + STACK_SUFFIXES) or array.shape[-1] > MAX_CHANNELS)
    ):
        if min(array.shape[:3]) < 1 or sorted(array.shape)[-2] < MIN_SIZE:
            problems.append(
                Problem(
                    path, f"volume of shape {array.shape} is empty or smaller than {MIN_SIZE}x{MIN_SIZE} per section"
                )
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            problems.append(Problem(path, "floating-point volume holds NaN or infinite values"))
        if path.lower().endswith(VOLUME_SUFFIXES) and 8 * min(array.shape[:2]) <= array.shape[2]:
            problems.append(
                Problem(
                    path,
                    f"shape {array.shape}: NIfTI arrays are (X, Y, Z) and this one has far more "
                    "sections than pixels across; if it was saved as (Z, Y, X), transpose it",
                    fatal=False,
                )
            )
        return problems, tuple(array.shape)
    if array.size == 0 or min(array.shape[:2]) < MIN_SIZE:
        problems.append(
            Problem(path, f"image of size {array.shape[:2]} is empty or smaller than {MIN_SIZE}x{MIN_SIZE}")
        )
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if array.ndim > 3 or channels > MAX_CHANNELS:
        problems.append(Problem(path, f"{channels} channels (shape {array.shape}); expected gray, RGB or RGBA"))
    if mode.startswith("I;16") or mode == "I":
        problems.append(Problem(path, f"16/32-bit integer image (mode {mode}): used at full range", fatal=False))
    elif mode == "F" or array.dtype.kind == "f":
        problems.append(Problem(path, "floating-point image: used as is, normalised per image", fatal=False))
        if not np.isfinite(array).all():
            problems.append(Problem(path, "floating-point image holds NaN or infinite values"))
    return problems, tuple(array.shape[:2])


def check_datalist(items: Sequence[dict], stacks: bool = False) -> list[Problem]:
    """Problems of ``[{"image", "label"}]`` samples: unreadable, truncated, tiny or empty images, wrong channel
    counts, 16-bit and float images (notes), masks of another size than their image or with no foreground values
    (note), duplicate images or ids. ``stacks``: samples may be image stacks or volumes (3D preset)."""
    problems: list[Problem] = []
    if not items:
        return [Problem("<datalist>", "the dataset is empty")]
    paths = [os.path.realpath(it["image"]) for it in items]
    sids = [it.get("id", Path(it["image"]).stem) for it in items]
    counts, ids = Counter(paths), Counter(sids)
    for it, path, sid in zip(items, paths, sids, strict=True):
        image_problems, size = check_image(it["image"], stacks)
        problems += image_problems
        if counts[path] > 1:
            problems.append(Problem(it["image"], f"listed {counts[path]} times"))
        if ids[sid] > 1:
            problems.append(Problem(it["image"], f"duplicate id {sid!r} ({ids[sid]} samples)"))
        if "label" not in it:
            problems.append(Problem(it["image"], "no label for this image"))
            continue
        label, _, problem = _read(it["label"], stacks)
        if problem:
            problems.append(problem)
        if label is None:
            continue
        label_size = tuple(label.shape) if size is not None and len(size) == 3 else tuple(label.shape[:2])
        if size is not None and label_size != size:
            problems.append(
                Problem(it["label"], f"mask size {label_size} differs from image size {size} of {it['image']}")
            )
        if len(label_size) == 2 and label.ndim > 2 and label.shape[-1] > MAX_CHANNELS:
            problems.append(Problem(it["label"], f"mask with {label.shape[-1]} channels"))
        foreground = label > 0.5  # as training binarises masks (AsDiscreted threshold 0.5)
        if not foreground.any():
            problems.append(Problem(it["label"], "empty mask (no foreground above 0.5)", fatal=False))
        values = np.unique(label) if stacks else ()  # 2D labels may be instance ids (one id per nucleus)
        if len(values) > 2:
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            problems.append(
                Problem(
                    it["label"],
                    f"mask with {len(values)} values ({shown}): every value above 0.5 "
                    "is foreground (instance ids merge; an 'ignore' value counts as foreground)",
                    fatal=False,
                )
            )
    return list(dict.fromkeys(problems))  # once per problem, even for a file listed twice


def check_dsb2018(src: str | os.PathLike) -> list[Problem]:
    """Problems of a DSB2018 folder in its original layout: image folders without ``images/<id>.png`` or without
    masks, unreadable images and masks, masks of another size than their image."""
    src = Path(src)
    if not src.is_dir():
        return [Problem(str(src), "folder not found")]
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    if not folders:
        return [Problem(str(src), "no image folders")]
    problems: list[Problem] = []
    for folder in folders:
        image = folder / "images" / f"{folder.name}.png"
        if not image.is_file():
            problems.append(Problem(str(folder), f"missing images/{folder.name}.png"))
            continue
        image_problems, size = check_image(str(image))
        problems += image_problems
        masks = sorted((folder / "masks").glob("*.png"))
        if not masks:
            problems.append(Problem(str(folder), "image folder with no masks"))
        for m in masks:
            array, _, problem = _read(str(m))
            if problem:
                problems.append(problem)
            elif size is not None and tuple(array.shape[:2]) != size:
                problems.append(Problem(str(m), f"mask size {array.shape[:2]} differs from image size {size}"))
    return problems


def _report(problems: list[Problem], what: str) -> str:
    n_err = sum(p.fatal for p in problems)
    lines = [f"{what}: {n_err} error(s), {len(problems) - n_err} note(s)"] + [f"  {p}" for p in problems]
    return "\n".join(lines)


def validated(
    items: list[dict], skip_bad: bool | str = False, what: str = "dataset", stacks: bool = False
) -> list[dict]:
    """``items`` after :func:`check_datalist`: raises ``ValueError`` with the full report when a sample is unusable,
    or, with ``skip_bad``, drops those samples and logs which. Notes are logged. ``stacks``: volumes allowed."""
    problems = check_datalist(items, stacks)
    if problems:
        logger.warning(_report(problems, what))
    bad_files = {p.path for p in problems if p.fatal}
    if not bad_files:
        return items
    if not as_bool(skip_bad):
        first = next(p for p in problems if p.fatal)
        raise InputError(
            f"invalid {what}: {len(bad_files)} unusable file(s), listed above (first: {first}); fix them, or rerun "
            "with --skip_bad_samples true to train without them."
        )
    kept, skipped = [], []
    for it in items:
        (skipped if it["image"] in bad_files or it.get("label") in bad_files else kept).append(it)
    skipped = [it["image"] for it in skipped]
    logger.warning(f"{what}: skipped {len(skipped)} sample(s): {', '.join(skipped)}")
    if not kept:
        raise InputError(f"{what}: no valid sample left after skipping {len(skipped)}.")
    return kept


def checked_split(
    datalist: str | os.PathLike,
    key: str = "training",
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool | str = False,
    spatial_dims: int = 2,
) -> list[dict]:
    """The ``key`` split of ``datalist`` (:func:`~scripts.data.load_datalist`), checked by :func:`validated`
    (volumes allowed when ``spatial_dims`` is 3): what ``train.json``'s ``train_datalist`` and ``val_datalist`` hold."""
    items = load_datalist(datalist, key, val_fraction=val_fraction, seed=seed)
    return validated(items, skip_bad, f"{key} data", stacks=int(spatial_dims) == 3)


OUTPUT_POSTFIXES = ("_seg", "_prob", "_overlay", "_instances")  # what inference.json writes next to <name>


def _base_name(path: str | os.PathLike) -> str:
    """The name ``SaveImaged`` gives the outputs of ``path``, before their postfix (``x.nii.gz`` -> ``x``)."""
    return os.path.basename(create_file_basename("", path, ".", separate_folder=False, makedirs=False))


class InputCheck:
    """Inference inputs split into readable ones (``good``) and the others (``bad``, with reasons), so that a folder
    run segments every good file and :meth:`raise_if_bad` (in ``finalize``) exits non-zero naming the bad ones.
    ``stacks``: multi-page TIFF stacks and NIfTI volumes are inputs too (EM presets), not problems. Two inputs whose
    outputs would share a name (``x.png``, ``x.jpg``) are a problem for the second; with ``output_dir`` the same folder
    as the inputs, earlier outputs (``*_seg``, ``*_prob``, ``*_overlay``) are not inputs."""

    def __init__(self, items: list[dict], stacks: bool = False, output_dir: str | None = None) -> None:
        self.good: list[dict] = []
        self.bad: list[Problem] = []
        self.output_dir = output_dir
        self.started = time.time() - 1.0  # files written from now on are this run's outputs
        outputs: dict[str, str] = {}  # output name (input name without its suffix) -> the input that writes it
        for it in items:
            path = Path(it["image"])
            base = _base_name(path)
            if (
                output_dir is not None
                and path.parent.resolve() == Path(output_dir).resolve()
                and base.endswith(OUTPUT_POSTFIXES)
            ):
                logger.info(f"skipping {path}: an output of an earlier run (the output folder is the input folder)")
                continue
            found = check_image(it["image"], stacks)[0]
            for note in (p for p in found if not p.fatal):
                logger.warning(str(note))
            fatal = [p for p in found if p.fatal]
            if not fatal and base in outputs:
                fatal = [
                    Problem(
                        str(path),
                        f"its outputs ({base}_seg.*) would overwrite those of {outputs[base]}; rename one of them",
                    )
                ]
            if fatal:
                self.bad += fatal
                logger.error(f"skipping {fatal[0]}")
            else:
                outputs[base] = str(path)
                self.good.append(it)
        if not self.good:
            if self.bad:
                logger.error(_report(self.bad, "no readable input"))
                raise InputError(
                    f"no readable input: {len(self.bad)} file(s) refused, listed above (first: {self.bad[0]})."
                )
            raise InputError("no input")

    def raise_if_bad(self) -> None:
        """End an inference run with one line (inputs segmented, files written where, inputs refused); exit
        non-zero naming the refused inputs when there are any."""
        n_bad = len({p.path for p in self.bad})
        written = 0
        if self.output_dir is not None and os.path.isdir(self.output_dir):
            written = sum(1 for e in os.scandir(self.output_dir) if e.is_file() and e.stat().st_mtime >= self.started)
        where = f" to {self.output_dir}" if self.output_dir is not None else ""
        summary = f"{len(self.good)} input(s) segmented: {written} file(s) written{where}; {n_bad} refused"
        if self.bad:
            raise SystemExit(_report(self.bad, f"{n_bad} input(s) not segmented") + "\n" + summary)
        logger.info(summary)


def _cli_datalist(datalist: str, keys: Sequence[str] = ("training", "validation"), stacks: bool | str = False) -> None:
    problems = []
    for key in keys:
        problems += check_datalist(load_datalist(datalist, key), as_bool(stacks))
    _exit(problems, datalist)


def _cli_dsb2018(src: str) -> None:
    _exit(check_dsb2018(src), src)


def _cli_images(folder: str, stacks: bool | str = False) -> None:
    problems = []
    for it in list_images(folder):
        problems += check_image(it["image"], as_bool(stacks))[0]
    _exit(problems, folder)


def _exit(problems: list[Problem], what: str) -> None:
    print(_report(problems, what) if problems else f"{what}: no problems found")
    if any(p.fatal for p in problems):
        raise SystemExit(1)


if __name__ == "__main__":
    from scripts import one_line_errors

    one_line_errors()
    logging.basicConfig(level=logging.INFO)
    fire.Fire({"datalist": _cli_datalist, "dsb2018": _cli_dsb2018, "images": _cli_images})
