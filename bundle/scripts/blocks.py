"""Block-wise inference of images and volumes larger than memory: zarr / OME-Zarr arrays and TIFF stacks read
lazily block by block, written block by block, resumable, shared by the processes of ``torchrun``.

Conventions: arrays are in their file's axes, ``(Z, Y, X)`` or ``(Y, X)``; the network sees each region in MONAI's
axes (reversed: ``(X, Y, Z)``), as the readers of ``inference.json`` give it. A **block** is the part of the output
one step writes (a whole number of the output's chunks, so no two blocks write the same chunk). Its **region** is
the block grown to every sliding window of the whole-volume window grid that touches the block (the halo), so a
block's output is what whole-volume inference gives there: same windows, same Gaussian blending, per-window
test-time flips; the only differences are float rounding in the blending sums (see ``docs/blocks.md``).

Used by ``configs/blocks.json`` (merged after ``inference.json`` and a preset); :class:`BlockInference` does the work,
with the preset's own preprocessing, activation and ``Instancesd`` on each region. Arrays are read by
:mod:`scripts.readers` (``open_array``, ``read_region``), outputs created and converted by :mod:`scripts.writers`,
objects cut by block borders joined with :class:`scripts.instances.UnionFind`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.inferers.merger import Merger
from monai.inferers.splitter import Splitter
from monai.transforms import (
    Activationsd,
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    HistogramNormalized,
    LoadImaged,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_to_tensor

from scripts import InputError, as_bool
from scripts.distributed import init_processes
from scripts.files import reverse_axes, write_json_atomic, write_text_atomic
from scripts.inferers import WholeImageInferer
from scripts.instances import UnionFind, object_table
from scripts.networks import load_weights
from scripts.readers import (
    array_stem,
    chunk_shape,
    list_inputs,
    missing_chunks,
    open_array,
    read_region,
    require_zarr,
    spatial_shape,
)
from scripts.writers import create_zarr_output, objects_csv_text, zarr_to_tiff

zarr = require_zarr()  # block-wise inference needs zarr 3: an error saying how to get it, at import

__all__ = [
    "block_preprocessing",
    "window_geometry",
    "BlockGrid",
    "ZarrBlockMerger",
    "default_block_shape",
    "BlockInference",
]

logger = logging.getLogger(__name__)


def window_geometry(inferer: Any, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sliding-window grid of ``inferer`` in file axes of an ``ndim``-D array: ``(window, stride)``.

    ``inferer`` is a preset's (wrappers such as ``AutocastInferer`` and ``FlipInferer`` are looked through); its
    sliding window is a MONAI ``SlidingWindowInferer`` (windows ``roi_size``, stride ``int(roi * (1 - overlap))``
    as MONAI computes it) or a ``SliceInferer`` (2D windows in each section: window and stride 1 across sections).
    A ``WholeImageInferer`` with ``max_pixels > 0`` is refused: block-wise inference needs the sliding window
    (``configs/blocks.json`` sets ``whole_image_max_pixels`` 0)."""
    inner = inferer
    while not isinstance(inner, SlidingWindowInferer):
        if isinstance(inner, WholeImageInferer) and inner.max_pixels > 0:
            raise ValueError("block-wise inference needs the sliding window: set whole_image_max_pixels 0.")
        if not hasattr(inner, "inferer"):
            raise ValueError(f"no sliding-window inferer inside {type(inferer).__name__}.")
        inner = inner.inferer
    roi = [int(r) for r in inner.roi_size]
    overlap = inner.overlap if isinstance(inner.overlap, Sequence) else [inner.overlap] * len(roi)
    stride = [max(int(r * (1 - o)), 1) for r, o in zip(roi, overlap, strict=True)]
    if isinstance(inner, SliceInferer):  # MONAI axes (X, Y, Z) with the slices along spatial_dim
        roi.insert(inner.spatial_dim, 1)
        stride.insert(inner.spatial_dim, 1)
    if len(roi) != ndim:
        raise ValueError(f"the preset's windows {tuple(roi)} do not fit a {ndim}-D array.")
    return tuple(roi[::-1]), tuple(stride[::-1])


def default_block_shape(
    shape: Sequence[int], chunks: Sequence[int], window: Sequence[int], windows_per_block: int = 8
) -> tuple[int, ...]:
    """A block of about ``windows_per_block`` windows along each axis (8 sections along a section-by-section axis),
    rounded up to whole chunks and clipped to the array: large enough that re-running the windows shared by two
    blocks costs a few percent, small enough to bound memory."""
    block = []
    for n, c, w in zip(shape, chunks, window, strict=True):
        target = max(w * windows_per_block, windows_per_block, c)
        block.append(min(n, math.ceil(target / c) * c))
    return tuple(block)


class BlockGrid(Splitter):
    """Blocks of ``block`` (file axes) over an array of ``shape``, and the region each block needs from a sliding
    window grid (``window``, ``stride``) laid over the whole array as MONAI lays it: starts ``0, s, 2s, ...``, the
    last one moved back to end at the array's end.

    A MONAI :class:`~monai.inferers.splitter.Splitter` of arrays larger than memory: ``grid(read, indices)`` yields,
    for each block index, ``(region, location)``, the block's region as ``read(i, slices)`` returns it (an array in
    file axes, read lazily) and the region's first voxel; :class:`ZarrBlockMerger` writes the blocks back."""

    def __init__(self, shape: Sequence[int], block: Sequence[int], window: Sequence[int], stride: Sequence[int]):
        super().__init__(patch_size=tuple(int(b) for b in block))
        self.shape, self.block = tuple(int(s) for s in shape), tuple(int(b) for b in block)
        self.window, self.stride = tuple(int(w) for w in window), tuple(int(s) for s in stride)
        self.counts = tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block, strict=True))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def get_input_shape(self, inputs: Any = None) -> tuple[int, ...]:
        return self.shape

    def get_padded_shape(self, inputs: Any = None) -> tuple[int, ...]:
        """The array's own shape: the windows are laid over the array itself, nothing is padded."""
        return self.shape

    def __call__(
        self, inputs: Callable[[int, tuple[slice, ...]], np.ndarray], indices: Iterable[int] | None = None
    ) -> Iterator[tuple[np.ndarray, tuple[int, ...]]]:
        """``(region, location)`` of each block of ``indices`` (default: all, in order): ``inputs(i, region(i))``
        and the region's first voxel (file axes)."""
        for i in range(len(self)) if indices is None else indices:
            region = self.region(i)
            yield inputs(i, region), tuple(r.start for r in region)

    def index(self, i: int) -> tuple[int, ...]:
        return tuple(int(k) for k in np.unravel_index(i, self.counts))

    def block_slices(self, i: int) -> tuple[slice, ...]:
        return tuple(
            slice(k * b, min((k + 1) * b, n)) for k, b, n in zip(self.index(i), self.block, self.shape, strict=True)
        )

    def _starts(self, axis: int) -> np.ndarray:
        n, w, s = self.shape[axis], self.window[axis], self.stride[axis]
        if w >= n:
            return np.zeros(1, int)
        count = next(d for d in range(math.ceil(n / s) + 1) if d * s + w >= n) + 1
        return np.minimum(np.arange(count) * s, n - w)

    def region(self, i: int) -> tuple[slice, ...]:
        """The region (file axes) covering every window that touches block ``i``."""
        out = []
        for axis, sl in enumerate(self.block_slices(i)):
            starts, w = self._starts(axis), self.window[axis]
            touching = starts[(starts < sl.stop) & (starts + w > sl.start)]
            out.append(slice(int(touching.min()), min(int(touching.max()) + w, self.shape[axis])))
        return tuple(out)


class ZarrBlockMerger(Merger):
    """A MONAI :class:`~monai.inferers.merger.Merger` that writes blocks into a zarr array (file axes) as they come.

    Like MONAI's ``ZarrAvgMerger`` it keeps the output on disk, but blocks never overlap (each owns whole chunks of
    the output, :class:`BlockGrid`), so nothing is averaged or counted: ``aggregate(values, location)`` writes
    ``values`` (the block, file axes) at ``location`` (its first voxel) cast to the array's dtype, and any process
    may write its own blocks. ``finalize()`` returns the array."""

    def __init__(self, array: zarr.Array) -> None:
        super().__init__(merged_shape=tuple(array.shape))
        self.array = array

    def aggregate(self, values: np.ndarray | torch.Tensor, location: Sequence[int]) -> None:
        values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        slices = tuple(slice(int(a), int(a) + n) for a, n in zip(location, values.shape, strict=True))
        self.array[slices] = values.astype(self.array.dtype, copy=False)

    def finalize(self) -> zarr.Array:
        self.is_finalized = True
        return self.array


# preprocessing steps that the block reader does itself (load the file, add the channel, keep the raw copy), and
# intensity transforms whose statistics span the whole image, which a block cannot reproduce from its region
_READING = (LoadImaged, EnsureChannelFirstd, CopyItemsd)
_WHOLE_IMAGE = (ScaleIntensityd, ScaleIntensityRangePercentilesd, HistogramNormalized)


def block_preprocessing(preprocessing: Compose | Sequence[Callable] | None) -> list[Callable]:
    """The preset's own preprocessing (``@preprocessing`` of ``inference.json`` and the presets), as block-wise
    inference runs it on each region (key ``"image"``, ``(1, *spatial)`` float32 in MONAI's axes): without the
    transforms that load the file and copy the raw image (the block reader gives the region), every other transform
    as declared; the ``NormalizeIntensityd`` (at most one) is given the whole array's mean and standard deviation,
    measured on the array as the transforms before it leave it (:meth:`BlockInference._preprocess`). ``None``:
    ``NormalizeIntensityd`` alone. Transforms whose statistics span the whole image (``ScaleIntensityd``,
    percentiles, histogram, ``NormalizeIntensityd`` with ``nonzero`` or ``channel_wise``) are refused, naming the
    transform, as blocks could not give what whole images give."""
    if preprocessing is None:
        return [NormalizeIntensityd(keys="image")]
    transforms = list(preprocessing.transforms if isinstance(preprocessing, Compose) else preprocessing)
    steps = []
    for t in transforms:
        if isinstance(t, _READING):
            continue
        normalize = getattr(t, "normalizer", None) if isinstance(t, NormalizeIntensityd) else None
        if isinstance(t, _WHOLE_IMAGE) or (normalize is not None and (normalize.nonzero or normalize.channel_wise)):
            raise InputError(
                f"block-wise inference cannot run the preset's {type(t).__name__}: its statistics span the whole"
                " image; use NormalizeIntensityd (whole-array mean and std) or a fixed-range transform."
            )
        steps.append(t)
    if sum(isinstance(t, NormalizeIntensityd) for t in steps) > 1:
        raise InputError("block-wise inference takes one NormalizeIntensityd in the preset's preprocessing, not more.")
    return steps


def _fingerprint(path: str, arr: zarr.Array, info: dict, options: dict) -> dict:
    return {
        "input": os.path.abspath(path),
        "shape": list(spatial_shape(arr, info)),
        "dtype": str(arr.dtype),
        "options": options,
    }


class BlockInference:
    """Segment each zarr / OME-Zarr / TIFF array of ``dataset_dir`` block by block into ``output_dir``.

    Args:
        dataset_dir: a ``.zarr`` folder, a TIFF file, or a folder of them (:func:`list_inputs`).
        output_dir: where ``<stem>_seg.zarr`` (uint8 mask, 255 = target, the input's shape and chunks; OME-Zarr
            with the input's axes and scale when the input was OME-Zarr), ``<stem>_prob.zarr`` (float16 probability,
            with ``save_probabilities``) and ``<stem>_instances.zarr`` (uint32 ids unique over the volume, objects
            cut by block borders joined) go; for a TIFF input, TIFF stacks of the same names, written page by page.
            ``<stem>_objects.csv`` lists the objects in :class:`scripts.writers.SaveObjectsd`'s columns (id, voxels,
            centroid, bounding box in file axes, equivalent diameter, mean input intensity).
        network: the preset's network; ``ckpt_path`` its weights.
        inferer: the preset's inferer (``scripts.inferers.with_flips(@inferer, @tta)``).
        instances: the preset's instance transform (``Instancesd``) or ``None``.
        preprocessing: the preset's preprocessing, run on each region (:func:`block_preprocessing`).
        postprocessing: the preset's postprocessing, whose ``Activationsd`` turns each region's logits into
            probabilities (``None``: a sigmoid); its writers are not run (blocks write zarr / TIFF themselves).
        block_shape: block size in file axes (``None``: :func:`default_block_shape`), rounded up to whole chunks.
        allow_missing_chunks: read chunks absent from a zarr store as its fill value (default: an error naming the
            array and the block).
        fold_batch_norm: fold the network's BatchNorm layers into its convolutions after loading the weights.
    """

    def __init__(
        self,
        dataset_dir: str,
        output_dir: str,
        network: torch.nn.Module,
        ckpt_path: str,
        inferer: Callable,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        instances: Callable | None = None,
        block_shape: Sequence[int] | None = None,
        save_probabilities: bool = False,
        allow_missing_chunks: bool = False,
        progress: bool = True,
        fold_batch_norm: bool | str = False,
        preprocessing: Compose | Sequence[Callable] | None = None,
        postprocessing: Compose | Sequence[Callable] | None = None,
    ) -> None:
        self.dataset_dir, self.output_dir = dataset_dir, Path(output_dir)
        self.fold_batch_norm = as_bool(fold_batch_norm)
        self.network, self.ckpt_path, self.inferer = network, ckpt_path, inferer
        self.device, self.threshold = torch.device(device), float(threshold)
        # objects under min_size are dropped after the objects cut by block borders are joined, not per block;
        # neuron segments are made section by section, their small ones flooded by neighbours within the block
        self.instances, self.min_size = instances, 0
        if hasattr(instances, "params") and getattr(instances, "method", "") != "neurons":
            self.instances = copy.copy(instances)
            self.instances.params = dict(instances.params, min_size=0)
            self.min_size = int(instances.params.get("min_size", 0))
        self.block_shape = tuple(int(b) for b in block_shape) if block_shape else None
        self.save_probabilities = bool(save_probabilities)
        self.allow_missing_chunks = bool(allow_missing_chunks)
        self.progress = bool(progress)
        self.rank, self.world = 0, 1
        self.preprocessing = block_preprocessing(preprocessing)
        normalize = [k for k, t in enumerate(self.preprocessing) if isinstance(t, NormalizeIntensityd)]
        self.before_normalize = self.preprocessing[: normalize[0]] if normalize else self.preprocessing
        steps = list(postprocessing.transforms if isinstance(postprocessing, Compose) else postprocessing or [])
        self.activation = next((t for t in steps if isinstance(t, Activationsd)), Activationsd("pred", sigmoid=True))

    # ---- processes -------------------------------------------------------------------------------------------
    def _start_processes(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            self.rank, self.world = init_processes(self.device), dist.get_world_size()

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _load_weights(self) -> None:
        load_weights(self.network, self.ckpt_path, "cpu", self.fold_batch_norm)

    # ---- one input ------------------------------------------------------------------------------------------
    def __call__(self) -> list[str]:
        self._start_processes()
        self._load_weights()
        inputs = list_inputs(self.dataset_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in inputs:
            written += self.segment(path)
        if self.rank == 0:
            logger.info(f"{len(inputs)} input(s) segmented block-wise: {len(written)} output(s) in {self.output_dir}")
        return written

    def _work_dir(self, stem: str) -> Path:
        return self.output_dir / f".{stem}_blocks"

    def _check_previous(self, path: str, arr: zarr.Array, info: dict, grid: BlockGrid, work: Path) -> dict:
        """Every rank, before anything is written: the fingerprint of this run (input, options, weights). A run
        record of another input or other options, or outputs of another run, are an error (nothing is touched)."""
        options = {"block": list(grid.block), "window": list(grid.window), "threshold": self.threshold}
        options["weights"] = hashlib.md5(Path(self.ckpt_path).read_bytes()).hexdigest()
        options["instances"] = type(self.instances).__name__ if self.instances is not None else None
        options["probabilities"] = self.save_probabilities
        fingerprint = _fingerprint(path, arr, info, options)
        record = work / "run.json"
        if record.is_file():
            previous = json.loads(record.read_text())
            if previous.get("fingerprint") != fingerprint:
                raise InputError(
                    f"{work}: holds a block-wise run of {previous.get('fingerprint', {}).get('input')} with other"
                    f" options or input; remove it (and the outputs of {array_stem(path)}) or choose another output_dir."
                )
            return fingerprint
        for name in ("seg", "prob", "instances"):
            out = self.output_dir / f"{array_stem(path)}_{name}.{'tif' if info['kind'] == 'tiff' else 'zarr'}"
            if out.exists():
                raise InputError(f"{out}: exists from another run; remove it or choose another output_dir.")
        return fingerprint

    def _prepare(
        self, arr: zarr.Array, info: dict, grid: BlockGrid, work: Path, fingerprint: dict, stats: tuple[float, float]
    ) -> None:
        """Rank 0, for a new run: empty outputs, then the run record (fingerprint, intensity statistics)."""
        stem = array_stem(info["path"])
        work.mkdir(parents=True, exist_ok=True)
        mean, std = stats
        chunks = chunk_shape(arr, info) if info["kind"] != "tiff" else tuple(grid.block)
        shape = spatial_shape(arr, info)
        self._create(work, stem, info, shape, chunks)
        run = {"fingerprint": fingerprint, "mean": mean, "std": std, "chunks": list(chunks)}
        write_json_atomic(run, work / "run.json", indent=1)

    def _read_block(
        self, arr: zarr.Array, info: dict, grid: BlockGrid, i: int, region: tuple[slice, ...]
    ) -> np.ndarray:
        """``region`` of the input for block ``i``; errors name the array, the block and the chunks."""
        block = grid.block_slices(i)
        if not self.allow_missing_chunks:
            lacking = missing_chunks(arr, info, region)
            if lacking:
                raise InputError(
                    f"{info['path']}: chunk(s) {lacking[:4]}{' ...' if len(lacking) > 4 else ''} missing from the"
                    f" array, needed by block {i} {_fmt(block)}; restore them or pass --allow_missing_chunks true."
                )
        try:
            return read_region(arr, info, region)
        except Exception as e:
            raise InputError(
                f"{info['path']}: block {i} {_fmt(block)} cannot be read (its region {_fmt(region)}:"
                f" {type(e).__name__}: {e})."
            ) from e

    def _statistics(self, arr: zarr.Array, info: dict, grid: BlockGrid) -> tuple[float, float]:
        """Mean and standard deviation of the whole array (as ``NormalizeIntensityd`` of the whole-volume path), one
        block at a time, each process reading its share of the blocks, the sums added over the processes. Integer
        inputs are summed exactly (int64), so every number of processes gives the same statistics."""
        exact = np.issubdtype(arr.dtype, np.integer) and not self.before_normalize
        dtype = np.int64 if exact else np.float64
        sums = np.zeros(3, dtype)  # sum, sum of squares, count
        for i in range(self.rank, len(grid), self.world):
            a = self._read_block(arr, info, grid, i, grid.block_slices(i))
            if self.before_normalize:  # the image as it reaches NormalizeIntensityd
                a = self._run(self.before_normalize, a).numpy()
            a = a.astype(dtype)
            sums += np.asarray([a.sum(), (a * a).sum(), a.size], dtype)
        if self.world > 1:
            import torch.distributed as dist

            shared = torch.from_numpy(sums)
            dist.all_reduce(shared)
            sums = shared.numpy()
        total, total2, n = (int(v) if exact else float(v) for v in sums)
        mean = total / max(n, 1)
        return mean, math.sqrt(max(total2 / max(n, 1) - mean * mean, 0.0))

    def _targets(self, work: Path, stem: str, info: dict) -> dict[str, Path]:
        """The zarr arrays written block by block: into ``output_dir`` for zarr inputs, the work folder for TIFF
        inputs (converted to TIFF at the end); instance ids first go to a 64-bit array in the work folder."""
        base = work if info["kind"] == "tiff" else self.output_dir
        targets = {"seg": base / f"{stem}_seg.zarr", "ids": work / "ids.zarr"}
        if self.save_probabilities:
            targets["prob"] = base / f"{stem}_prob.zarr"
        if self.instances is not None:
            targets["instances"] = base / f"{stem}_instances.zarr"
        return targets

    def _create(self, work: Path, stem: str, info: dict, shape: tuple, chunks: tuple) -> None:
        for name, target in self._targets(work, stem, info).items():
            if name != "ids" or self.instances is not None:
                create_zarr_output(target, name, info, shape, chunks)

    def _open_targets(self, work: Path, stem: str, info: dict) -> dict[str, ZarrBlockMerger]:
        out = {}
        for name, target in self._targets(work, stem, info).items():
            if name == "ids" and self.instances is None:
                continue
            node = zarr.open(str(target), mode="r+")
            out[name] = ZarrBlockMerger(node["0"] if isinstance(node, zarr.Group) else node)
        return out

    def segment(self, path: str) -> list[str]:
        """Segment one array; returns the output paths (rank 0) or ``[]``."""
        arr, info = open_array(path)
        shape = spatial_shape(arr, info)
        window, stride = window_geometry(self.inferer, len(shape))
        chunks = chunk_shape(arr, info)
        block = self.block_shape or default_block_shape(shape, chunks, window)
        if len(block) != len(shape):
            raise InputError(f"{path}: block_shape {block} does not fit its {len(shape)} axes {tuple(shape)}.")
        block = tuple(min(n, math.ceil(b / c) * c) for b, c, n in zip(block, chunks, shape, strict=True))
        grid = BlockGrid(shape, block, window, stride)
        stem, work = array_stem(path), self._work_dir(array_stem(path))
        fingerprint = self._check_previous(path, arr, info, grid, work)
        new_run = not (work / "run.json").is_file()
        self._barrier()  # every process has looked before rank 0 writes the record
        if new_run:
            stats = self._statistics(arr, info, grid)
            if self.rank == 0:
                self._prepare(arr, info, grid, work, fingerprint, stats)
        self._barrier()
        run = json.loads((work / "run.json").read_text())
        targets = self._open_targets(work, stem, info)
        done_dir = work / "done"
        done_dir.mkdir(exist_ok=True)
        done = {int(f.stem) for f in done_dir.glob("*.json")}
        mine = [i for i in range(len(grid)) if i % self.world == self.rank and i not in done]
        if self.rank == 0:
            logger.info(
                f"{path}: {tuple(shape)} in {len(grid)} block(s) of {grid.block} (windows {grid.window}),"
                f" {len(done)} already done, {self.world} process(es)"
            )
        start = time.perf_counter()
        regions = grid(functools.partial(self._read_block, arr, info, grid), mine)
        for k, (i, (raw, _)) in enumerate(zip(mine, regions, strict=True)):
            self._segment_block(raw, grid, i, run, targets, done_dir)
            if self.progress:
                rate = (time.perf_counter() - start) / (k + 1)
                logger.info(
                    f"block {i + 1}/{len(grid)} done (process {self.rank}: {k + 1}/{len(mine)}, {rate:.1f} s a block)"
                )
        self._barrier()
        written: list[str] = []
        if self.rank == 0:
            written = self._finish(path, info, grid, work, stem, targets)
        self._barrier()
        return written

    def _segment_block(
        self, raw: np.ndarray, grid: BlockGrid, i: int, run: dict, targets: dict[str, ZarrBlockMerger], done_dir: Path
    ) -> None:
        """Block ``i`` from its region ``raw`` (file axes): the network over the region, then the block's mask,
        probabilities and objects into the mergers, and its record into ``done_dir``."""
        region, block = grid.region(i), grid.block_slices(i)
        start = tuple(b.start for b in block)
        x = self._preprocess(raw, run)[None].to(self.device)
        with torch.no_grad():
            logits = self.inferer(x, self.network)
        prob = convert_to_tensor(self.activation({"pred": logits[0].float()})["pred"], track_meta=False)
        # the objects see ``context`` pixels of the halo around the block (an in-plane erosion needs them), then the
        # block is cut out, so that blocks give what the whole volume gives
        context = getattr(self.instances, "erode", 0)
        near = [
            slice(max(b.start - context, r.start), min(b.stop + context, r.stop))
            for b, r in zip(block, region, strict=True)
        ]
        outer = tuple(slice(n.start - r.start, n.stop - r.start) for n, r in zip(near, region, strict=True))
        inner = tuple(slice(b.start - n.start, b.stop - n.start) for b, n in zip(block, near, strict=True))
        prob = prob[(slice(None),) + outer[::-1]]
        ids = None
        if self.instances is not None:
            d = self.instances({"pred": prob})
            prob, ids = d["pred"], reverse_axes(d["instances"][0].detach().cpu().numpy())[inner].astype(np.uint64)
        prob = prob[(slice(None),) + inner[::-1]]
        p = reverse_axes(prob[0].detach().float().cpu().numpy())
        targets["seg"].aggregate(np.where(p >= self.threshold, 255, 0), start)
        if "prob" in targets:
            targets["prob"].aggregate(p, start)
        record: dict[str, Any] = {"block": i, "slices": _fmt(block), "objects": 0}
        if ids is not None:
            record["objects"] = int(ids.max(initial=0))
            targets["ids"].aggregate(np.where(ids > 0, ids + _block_key(i), 0), start)
            # each object's sum of input intensities in this block, for the table's mean_intensity
            in_block = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(block, region, strict=True))
            sums = np.bincount(ids.ravel().astype(np.int64), weights=raw[in_block].astype(np.float64).ravel())
            record["intensity"] = {str(k): float(sums[k]) for k in np.flatnonzero(sums[1:]) + 1}
        write_json_atomic(record, done_dir / f"{i}.json", indent=1)

    def _preprocess(self, raw: np.ndarray, run: dict) -> torch.Tensor:
        """A region (file axes) through the preset's preprocessing (:func:`block_preprocessing`), normalised with the
        whole array's statistics: ``(1, *spatial)`` in MONAI's axes, as the whole-image path gives the network."""
        steps = [
            (
                NormalizeIntensityd(
                    t.keys,
                    subtrahend=run["mean"],
                    divisor=run["std"] if run["std"] > 0 else 1.0,
                    dtype=t.normalizer.dtype,
                )
                if isinstance(t, NormalizeIntensityd)
                else t
            )
            for t in self.preprocessing
        ]
        return self._run(steps, raw)

    @staticmethod
    def _run(steps: Sequence[Callable], raw: np.ndarray) -> torch.Tensor:
        """``raw`` (file axes) as a float32 ``(1, *spatial)`` image in MONAI's axes (key ``"image"``) through
        ``steps``; an error when they change its shape."""
        data: dict[str, Any] = {"image": torch.from_numpy(reverse_axes(raw.astype(np.float32), contiguous=True))[None]}
        for t in steps:
            data = t(data)
        image = convert_to_tensor(data["image"], track_meta=False)
        if tuple(image.shape[1:]) != raw.shape[::-1]:
            raise InputError(
                f"the preset's preprocessing changes a block's shape {raw.shape[::-1]} to {tuple(image.shape[1:])}:"
                " block-wise inference needs transforms that keep the image's grid."
            )
        return image

    # ---- after all blocks -----------------------------------------------------------------------------------
    def _finish(self, path: str, info: dict, grid: BlockGrid, work: Path, stem: str, targets: dict) -> list[str]:
        if self.instances is not None and not (work / "instances.json").is_file():
            self._join_instances(grid, targets, work, stem, info)
        names = [n for n in ("seg", "prob", "instances") if n in targets]
        outputs = []
        for name in names:
            zpath = self._targets(work, stem, info)[name]
            if info["kind"] == "tiff":
                tif = self.output_dir / f"{stem}_{name}.tif"
                if not tif.exists():
                    zarr_to_tiff(targets[name].finalize(), tif)
                outputs.append(str(tif))
            else:
                outputs.append(str(zpath))
        if self.instances is not None:
            outputs.append(str(self.output_dir / f"{stem}_objects.csv"))
        if info["kind"] == "tiff":
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "ids.zarr", ignore_errors=True)
        logger.info(f"{path}: written " + ", ".join(outputs))
        return outputs

    def _join_instances(self, grid: BlockGrid, targets: dict, work: Path, stem: str, info: dict) -> None:
        """Join objects that touch across a block face (for section-by-section ``neurons`` only within sections),
        drop objects under ``min_size`` (from the mask and probabilities too, as ``Instancesd`` does), number the
        rest ``1..N`` over the volume into ``<stem>_instances`` and write ``<stem>_objects.csv``."""
        ids = targets["ids"].finalize()
        union = UnionFind()
        section_wise = getattr(self.instances, "method", "") == "neurons" and len(grid.shape) == 3
        axes = range(1, len(grid.shape)) if section_wise else range(len(grid.shape))
        sizes: dict[int, int] = {}
        for i in range(len(grid)):
            sl = grid.block_slices(i)
            keys, counts = np.unique(np.asarray(ids[sl]), return_counts=True)
            for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
                if k:
                    sizes[k] = c
            for axis in axes:
                if sl[axis].stop >= grid.shape[axis]:
                    continue
                a = list(sl)
                a[axis] = slice(sl[axis].stop - 1, sl[axis].stop + 1)  # this block's last layer, the next one's first
                pair = np.asarray(ids[tuple(a)])
                first, second = np.take(pair, 0, axis=axis), np.take(pair, 1, axis=axis)
                both = (first > 0) & (second > 0)
                for u, v in set(zip(first[both].tolist(), second[both].tolist(), strict=True)):
                    union.union(u, v)
        totals: dict[int, int] = {}
        for k, c in sizes.items():
            root = union.find(k)
            totals[root] = totals.get(root, 0) + c
        labels: dict[int, int] = {}
        stats: dict[int, list] = {}
        intensity: dict[int, float] = {}
        for i in range(len(grid)):
            sl = grid.block_slices(i)
            block_ids = np.asarray(ids[sl])
            keys = np.unique(block_ids[block_ids > 0]).tolist()
            sums = json.loads((work / "done" / f"{i}.json").read_text()).get("intensity", {})
            values = [0]
            for k in keys:
                root = union.find(k)
                if totals[root] < self.min_size:
                    values.append(0)
                    continue
                if root not in labels:
                    labels[root] = len(labels) + 1
                values.append(labels[root])
                local = str(k - _block_key(i))
                intensity[labels[root]] = intensity.get(labels[root], 0.0) + sums.get(local, float("nan"))
            lut_keys = np.asarray([0] + keys, np.uint64)
            final = np.asarray(values, np.uint32)[np.searchsorted(lut_keys, block_ids)]
            origin = tuple(s.start for s in sl)
            targets["instances"].aggregate(final, origin)
            dropped = (block_ids > 0) & (final == 0)
            if dropped.any():
                for name in ("seg", "prob"):
                    if name in targets:
                        part = np.asarray(targets[name].array[sl])
                        part[dropped] = 0
                        targets[name].aggregate(part, origin)
            _accumulate(stats, final, [s.start for s in sl])
        _write_objects_csv(stats, intensity, self.output_dir / f"{stem}_objects.csv", len(grid.shape))
        write_json_atomic({"objects": len(labels)}, work / "instances.json", indent=1)


def _block_key(i: int) -> np.uint64:
    """What block ``i`` adds to its objects' ids in the 64-bit ids array, so that ids are unique over blocks."""
    return np.uint64(i + 1) << np.uint64(32)


def _fmt(slices: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"


def _accumulate(stats: dict[int, list], final: np.ndarray, origin: list[int]) -> None:
    """Add each object's voxel count, coordinate sums and bounding box in this block (offset ``origin``), measured
    by :func:`scripts.instances.object_table` on the block's ids renumbered ``1..n``."""
    present = np.unique(final[final > 0])
    if present.size == 0:
        return
    local = np.where(final > 0, np.searchsorted(present, final) + 1, 0)
    table = object_table(local)
    ndim = final.ndim
    for j, obj in enumerate(present.tolist()):
        n = float(table["area"][j])
        sums = [(float(table[f"centroid-{a}"][j]) + o) * n for a, o in enumerate(origin)]
        lo = [int(table[f"bbox-{a}"][j]) + o for a, o in enumerate(origin)]
        hi = [int(table[f"bbox-{a + ndim}"][j]) + o for a, o in enumerate(origin)]
        if obj not in stats:
            stats[obj] = [n, sums, lo, hi]
        else:
            s = stats[obj]
            s[0] += n
            s[1] = [x + y for x, y in zip(s[1], sums, strict=True)]
            s[2] = [min(x, y) for x, y in zip(s[2], lo, strict=True)]
            s[3] = [max(x, y) for x, y in zip(s[3], hi, strict=True)]


def _write_objects_csv(stats: dict[int, list], intensity: dict[int, float], path: Path, ndim: int) -> None:
    """``<stem>_objects.csv`` of the joined objects, in the schema of :class:`scripts.writers.SaveObjectsd`
    (``object_table``'s columns, :func:`scripts.writers.objects_csv_text`)."""
    ids = sorted(stats)
    area = np.asarray([stats[k][0] for k in ids], np.float64)
    table: dict[str, np.ndarray] = {"id": np.asarray(ids, np.int64), "area": area}
    for a in range(ndim):
        table[f"centroid-{a}"] = np.asarray([stats[k][1][a] for k in ids], np.float64) / np.maximum(area, 1)
    for a in range(2 * ndim):
        table[f"bbox-{a}"] = np.asarray([stats[k][2 + a // ndim][a % ndim] for k in ids], np.int64)
    table["equivalent_diameter"] = (2 * ndim * area / math.pi) ** (1 / ndim)  # as scikit-image's regionprops
    table["mean_intensity"] = np.asarray([intensity.get(k, float("nan")) for k in ids], np.float64) / np.maximum(
        area, 1
    )
    write_text_atomic(objects_csv_text(table, ndim), path)
