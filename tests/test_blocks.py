"""Block-wise inference (configs/blocks.json, scripts/blocks.py) on zarr / OME-Zarr / TIFF arrays built from the
shipped DSB2018 sample: agreement with whole-image inference, resuming after SIGKILL, two torchrun processes,
bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from monai.data.utils import dense_patch_slices
from monai.inferers.merger import Merger
from monai.inferers.splitter import Splitter
from monai.inferers.utils import _get_scan_interval
from PIL import Image

from conftest import BUNDLE, GET_DATA, SHARED_DATA, run_bundle
from scripts import InputError
from scripts.blocks import BlockGrid, ZarrBlockMerger, default_block_shape
from scripts.readers import open_array

BLOCKS = "['configs/inference.json','configs/blocks.json']"


def test_blocks_run_the_presets_own_preprocessing_with_whole_array_statistics():
    """Each region goes through the preset's preprocessing (reading steps left out), its NormalizeIntensityd taking
    the statistics of the whole array as the steps before it leave it: a block equals the whole image's pipeline
    there. Whole-image statistics a block cannot know are refused."""
    from monai.transforms import (
        Compose,
        CopyItemsd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        ScaleIntensityd,
        ScaleIntensityRanged,
    )

    from scripts.blocks import BlockInference, block_preprocessing

    image = np.random.default_rng(0).integers(0, 4000, (30, 40)).astype(np.uint16)  # file axes (Y, X)
    scale = ScaleIntensityRanged("image", a_min=0, a_max=4095, b_min=0, b_max=1)
    preset = [LoadImaged("image"), EnsureChannelFirstd("image"), CopyItemsd("image", names="image_raw")]
    preset += [scale, NormalizeIntensityd("image"), EnsureTyped("image")]
    assert [type(t) for t in block_preprocessing(Compose(preset))] == [
        ScaleIntensityRanged,
        NormalizeIntensityd,
        EnsureTyped,
    ]
    whole = Compose([scale, NormalizeIntensityd("image")])(
        {"image": torch.from_numpy(image.T.astype(np.float32))[None]}
    )
    blocks = BlockInference.__new__(BlockInference)
    blocks.preprocessing = block_preprocessing(preset)
    blocks.before_normalize = blocks.preprocessing[:1]
    scaled = BlockInference._run(blocks.before_normalize, image).numpy().astype(np.float64)
    run = {"mean": scaled.mean(), "std": scaled.std()}
    part = blocks._preprocess(image[5:20, 10:35], run)  # a region: rows 5-19, columns 10-34
    assert part.shape == (1, 25, 15)  # MONAI's axes (X, Y)
    assert torch.allclose(part, torch.as_tensor(whole["image"])[:, 10:35, 5:20], atol=1e-5)
    with pytest.raises(InputError, match="ScaleIntensityd: its statistics span the whole image"):
        block_preprocessing([ScaleIntensityd("image")])
    with pytest.raises(InputError, match="NormalizeIntensityd: its statistics span"):
        block_preprocessing([NormalizeIntensityd("image", nonzero=True)])


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A 520x600 uint8 'slide' (chunks 128x128) tiled from the sample's images, as a zarr array and a PNG."""
    root = tmp_path_factory.mktemp("slide")
    files = sorted((BUNDLE / "sample_data" / "dsb2018" / "images").glob("*.png"))
    tiles = []
    for k in range(9):
        a = np.asarray(Image.open(files[k % len(files)]).convert("L"))
        tiles.append(np.pad(a, ((0, max(0, 256 - a.shape[0])), (0, max(0, 256 - a.shape[1]))), "reflect")[:256, :256])
    big = np.block([[tiles[3 * r + c] for c in range(3)] for r in range(3)])[:520, :600]
    z = zarr.create_array(str(root / "zarr" / "slide.zarr"), shape=big.shape, chunks=(128, 128), dtype="uint8")
    z[:] = big
    (root / "png").mkdir()
    Image.fromarray(big).save(root / "png" / "slide.png")
    return root


def _zarr(path: Path) -> np.ndarray:
    node = zarr.open(str(path), mode="r")
    return np.asarray((node["0"] if isinstance(node, zarr.Group) else node)[:])


def test_block_regions_hold_exactly_the_whole_volume_windows_that_touch_each_block():
    for shape, block, window, overlap in [
        ((100, 70), (32, 32), (16, 16), 0.25),
        ((9, 50, 41), (4, 16, 16), (3, 8, 8), 0.5),
    ]:
        stride = tuple(int(w * (1 - overlap)) for w in window)
        assert stride == tuple(_get_scan_interval(shape, window, len(shape), [overlap] * len(shape)))
        grid = BlockGrid(shape, block, window, stride)
        whole = dense_patch_slices(shape, window, stride)
        for i in range(len(grid)):
            b, r = grid.block_slices(i), grid.region(i)
            touching = {
                tuple((s.start, s.stop) for s in w)
                for w in whole
                if all(s.start < bs.stop and s.stop > bs.start for s, bs in zip(w, b, strict=True))
            }
            size = [x.stop - x.start for x in r]
            local = dense_patch_slices(
                size, window, tuple(_get_scan_interval(size, window, len(size), [overlap] * len(size)))
            )
            in_region = {tuple((s.start + x.start, s.stop + x.start) for s, x in zip(w, r, strict=True)) for w in local}
            # the region's own grid (as MONAI's sliding window lays it over the region) is the whole volume's there
            assert in_region == touching, (shape, i)
    assert default_block_shape((3000, 900), (128, 128), (256, 256)) == (2048, 900)
    assert default_block_shape((40, 5000, 5000), (1, 512, 512), (1, 256, 256)) == (8, 2048, 2048)


def test_block_splitter_and_zarr_merger_reassemble_the_array(tmp_path):
    image = np.arange(100 * 70, dtype=np.uint16).reshape(100, 70)
    grid = BlockGrid(image.shape, (32, 32), (16, 16), (12, 12))
    assert isinstance(grid, Splitter) and grid.get_padded_shape() == grid.get_input_shape() == (100, 70)
    out = zarr.create_array(str(tmp_path / "out.zarr"), shape=image.shape, chunks=(32, 32), dtype=np.uint16)
    merger = ZarrBlockMerger(out)
    assert isinstance(merger, Merger)
    order = [5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]  # any order, e.g. one process's share, then another's
    reads = []

    def read(i, region):
        reads.append(i)
        return image[region]

    for i, (region, location) in zip(order, grid(read, order), strict=True):
        r = grid.region(i)
        assert location == tuple(s.start for s in r) and np.array_equal(region, image[r])
        block = grid.block_slices(i)  # the block inside its region, written at the block's first voxel
        merger.aggregate(
            region[tuple(slice(b.start - a.start, b.stop - a.start) for b, a in zip(block, r, strict=True))],
            tuple(b.start for b in block),
        )
    assert reads == order and len(grid) == 12
    assert np.array_equal(np.asarray(merger.finalize()[:]), image) and merger.is_finalized


@pytest.fixture(scope="module")
def blocks_256(slide, tmp_path_factory) -> Path:
    """The slide segmented in 256x256 blocks by one process, with probabilities."""
    out = tmp_path_factory.mktemp("blocks")
    run_bundle(
        "run",
        "--config_file",
        BLOCKS,
        "--dataset_dir",
        str(slide / "zarr"),
        "--output_dir",
        str(out),
        "--block_shape",
        "[256,256]",
        "--save_probabilities",
        "true",
    )
    return out


@pytest.mark.slow
def test_blockwise_matches_whole_image_inference(slide, blocks_256, tmp_path):
    run_bundle(
        "run",
        "--config_file",
        BLOCKS,
        "--dataset_dir",
        str(slide / "zarr" / "slide.zarr"),
        "--output_dir",
        str(tmp_path / "one_block"),
        "--block_shape",
        "[1024,1024]",
        "--save_probabilities",
        "true",
    )
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(slide / "png"),
        "--output_dir",
        str(tmp_path / "whole"),
        "--whole_image_max_pixels",
        "0",
        "--progress_bar",
        "false",
    )
    seg, one = _zarr(blocks_256 / "slide_seg.zarr"), _zarr(tmp_path / "one_block" / "slide_seg.zarr")
    whole = np.asarray(Image.open(tmp_path / "whole" / "slide_seg.png"))
    assert seg.shape == whole.shape == (520, 600) and seg.dtype == np.uint8
    assert zarr.open(str(blocks_256 / "slide_seg.zarr"), mode="r").chunks == (128, 128)
    assert (seg != whole).sum() <= 10 and (seg != one).sum() <= 10  # bf16 rounding in the blending sums at most
    prob, prob_one = _zarr(blocks_256 / "slide_prob.zarr"), _zarr(tmp_path / "one_block" / "slide_prob.zarr")
    assert np.abs(prob.astype(np.float32) - prob_one.astype(np.float32)).max() < 1e-3
    ids, whole_ids = _zarr(blocks_256 / "slide_instances.zarr"), np.asarray(
        Image.open(tmp_path / "whole" / "slide_instances.png")
    )
    assert ids.dtype == np.uint32 and ((ids > 0) == (seg > 0)).all()
    assert abs(int(ids.max()) - int(whole_ids.max())) <= 3  # objects cut by block borders are joined
    assert len(np.unique(ids[ids > 0])) == int(ids.max())  # ids 1..N, unique over the slide
    rows = (blocks_256 / "slide_objects.csv").read_text().splitlines()
    # one schema: the columns of the whole image's table (SaveObjectsd)
    assert rows[0] == (tmp_path / "whole" / "slide_objects.csv").read_text().splitlines()[0]
    assert rows[0].startswith("id,area,centroid_y,centroid_x,bbox_y_min") and len(rows) == int(ids.max()) + 1
    table = {int(r.split(",")[0]): r.split(",") for r in rows[1:]}
    raw = _zarr(slide / "zarr" / "slide.zarr").astype(np.float64)
    column = rows[0].split(",").index("mean_intensity")
    for k in (1, int(ids.max()) // 2, int(ids.max())):  # the input's intensities over the joined object
        assert float(table[k][column]) == pytest.approx(raw[ids == k].mean(), abs=1e-3)
    areas = {int(r.split(",")[0]): int(r.split(",")[1]) for r in rows[1:]}
    assert areas == {int(k): int(v) for k, v in zip(*np.unique(ids[ids > 0], return_counts=True), strict=True)}


@pytest.mark.slow
def test_blockwise_resumes_after_sigkill(slide, tmp_path):
    args = ["run", "--config_file", BLOCKS, "--dataset_dir", str(slide / "zarr"), "--block_shape", "[256,256]"]
    args += ["--objects", "false", "--output_dir"]
    env = {"OMP_NUM_THREADS": "1"}
    run_bundle(*args, str(tmp_path / "ref"), env=env)
    out = tmp_path / "resumed"
    # stopped hard (as by SIGKILL) right after the third of the 3 x 3 blocks is recorded as done
    proc = run_bundle(*args, str(out), env=env, check=False, stop_after=(3, "[0-9].json"))
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert len(list((out / ".slide_blocks" / "done").glob("*.json"))) == 3
    again = run_bundle(*args, str(out), env=env)
    assert "3 already done" in again.stdout + again.stderr
    assert np.array_equal(_zarr(out / "slide_seg.zarr"), _zarr(tmp_path / "ref" / "slide_seg.zarr"))


@pytest.mark.slow
def test_two_torchrun_processes_write_one_output(slide, blocks_256, tmp_path):
    args = ["run", "--config_file", BLOCKS, "--dataset_dir", str(slide / "zarr")]
    proc = run_bundle(*args, "--block_shape", "[256,256]", "--output_dir", str(tmp_path / "two"), nproc=2)
    assert "2 process(es)" in proc.stdout + proc.stderr
    for name in ("seg", "instances"):
        assert np.array_equal(_zarr(tmp_path / "two" / f"slide_{name}.zarr"), _zarr(blocks_256 / f"slide_{name}.zarr"))


@pytest.mark.slow
def test_ome_zarr_in_ome_zarr_out_and_tiff_in_tiff_out(slide, tmp_path):
    import tifffile

    big = _zarr(slide / "zarr" / "slide.zarr")[:256, :256]
    group = zarr.open_group(str(tmp_path / "in" / "img.ome.zarr"), mode="w", zarr_format=2)
    ms = {
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.5]}]}],
    }
    group.attrs["multiscales"] = [ms]
    group.create_array("0", shape=(1, 256, 256), chunks=(1, 128, 128), dtype="uint8")[:] = big[None]
    tifffile.imwrite(tmp_path / "in" / "img2.tif", big)
    run_bundle(
        "run",
        "--config_file",
        BLOCKS,
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--objects",
        "false",
    )
    out = zarr.open_group(str(tmp_path / "out" / "img_seg.zarr"), mode="r")
    meta = out.attrs["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["y", "x"]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    seg = np.asarray(out["0"][:])
    assert seg.shape == (256, 256) and set(np.unique(seg)) <= {0, 255} and seg.any()
    tif = tifffile.imread(tmp_path / "out" / "img2_seg.tif")
    assert np.array_equal(tif, seg)  # the same pixels through the TIFF path, written page by page
    assert not (tmp_path / "out" / ".img2_blocks").exists()


def _blocks(dataset_dir: Path, output_dir: Path, **overrides) -> object:
    """``configs/blocks.json``'s ``BlockInference`` built in this process (nuclei preset, no objects)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ("inference.json", "blocks.json")])
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)})
    parser.update({"objects": False, "progress_bar": False, **overrides})
    return parser.get_parsed_content("blocks")


def test_bad_arrays_get_errors_naming_the_array_and_block(slide, tmp_path):
    four = tmp_path / "four.zarr"
    zarr.create_array(str(four), shape=(2, 2, 64, 64), chunks=(1, 1, 64, 64), dtype="uint8")
    with pytest.raises(InputError, match=r"four.zarr: shape \(2, 2, 64, 64\): expected 2 axes"):
        open_array(four)
    holey = tmp_path / "holey" / "h.zarr"
    shutil.copytree(slide / "zarr" / "slide.zarr", holey)
    chunk = holey / "c" / "1" / "1"
    assert chunk.is_file()
    chunk.unlink()
    missing = "h.zarr: chunk(s) [(1, 1)] missing from the array, needed by block 0 [0:256, 0:256]"
    with pytest.raises(InputError, match=re.escape(missing)):
        _blocks(holey, tmp_path / "o", block_shape=[256, 256])()
    chunk.write_bytes(b"not a zstd frame")  # a chunk that exists but does not decode
    with pytest.raises(InputError, match=re.escape("h.zarr: block 0 [0:256, 0:256] cannot be read")):
        _blocks(holey, tmp_path / "o3", block_shape=[256, 256])()
    # another input of the same name into an output_dir that holds a run: refused, the earlier output untouched
    ok, other = tmp_path / "ok" / "h.zarr", tmp_path / "other" / "h.zarr"
    zarr.create_array(str(ok), shape=(128, 96), chunks=(64, 64), dtype="uint8")[:] = _zarr(
        slide / "zarr" / "slide.zarr"
    )[:128, :96]
    zarr.create_array(str(other), shape=(64, 64), chunks=(64, 64), dtype="uint8")[:] = 7
    _blocks(ok, tmp_path / "o2")()
    before = _zarr(tmp_path / "o2" / "h_seg.zarr")
    with pytest.raises(InputError, match="holds a block-wise run of"):
        _blocks(other, tmp_path / "o2")()
    assert np.array_equal(_zarr(tmp_path / "o2" / "h_seg.zarr"), before)
    assert json.loads((tmp_path / "o2" / ".h_blocks" / "run.json").read_text())["fingerprint"]["input"].endswith(
        "ok/h.zarr"
    )
    # the same command again: every block is done, the outputs stay
    _blocks(ok, tmp_path / "o2")()
    assert np.array_equal(_zarr(tmp_path / "o2" / "h_seg.zarr"), before)


@pytest.mark.slow
def test_em3d_blockwise_volume_matches_whole_volume_with_3d_objects(tmp_path):
    """The 3D preset on a crop of VNC validation sections 10-15 (a zarr (Z, Y, X) of 6 x 320 x 288), block-wise in
    2 x 2 x 2 blocks and whole through inference.json (the same crop as a TIFF stack), one pass."""
    import tifffile

    vnc = SHARED_DATA / "drosophila_vnc_sstem" / "stack1" / "raw"
    if not vnc.is_dir():
        pytest.skip(f"needs the Drosophila VNC stack at {vnc.parent}: set R2ATTUNET_DATA, or {GET_DATA['vnc']}")
    volume = np.stack([tifffile.imread(vnc / f"{k}.tif") for k in range(10, 16)])[:, 300:620, 400:688]
    z = zarr.create_array(
        str(tmp_path / "in" / "crop.zarr"), shape=volume.shape, chunks=(3, 160, 144), dtype=volume.dtype
    )
    z[:] = volume
    (tmp_path / "tif").mkdir()
    tifffile.imwrite(tmp_path / "tif" / "crop.tif", volume)
    em3d = "['configs/inference.json','configs/em3d.json','configs/blocks.json']"
    run_bundle(
        "run",
        "--config_file",
        em3d,
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "blocks"),
        "--tta",
        "false",
        "--block_shape",
        "[3,160,144]",
    )
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em3d.json']",
        "--dataset_dir",
        str(tmp_path / "tif"),
        "--output_dir",
        str(tmp_path / "whole"),
        "--tta",
        "false",
        "--progress_bar",
        "false",
    )
    seg, whole = _zarr(tmp_path / "blocks" / "crop_seg.zarr"), tifffile.imread(tmp_path / "whole" / "crop_seg.tif")
    assert seg.shape == whole.shape == (6, 320, 288) and 0.01 < (seg > 0).mean() < 0.5
    assert (seg != whole).sum() <= 0.0001 * seg.size
    ids, whole_ids = _zarr(tmp_path / "blocks" / "crop_instances.zarr"), tifffile.imread(
        tmp_path / "whole" / "crop_instances.tif"
    )
    assert ids.max() == whole_ids.max() and ((ids > 0) == (whole_ids > 0)).all()  # 3D objects joined across blocks
    rows = (tmp_path / "blocks" / "crop_objects.csv").read_text().splitlines()
    assert rows[0] == (tmp_path / "whole" / "crop_objects.csv").read_text().splitlines()[0]
    assert rows[0].startswith("id,area,centroid_z,centroid_y,centroid_x,bbox_z_min") and len(rows) == ids.max() + 1


@pytest.mark.slow
def test_em2d_blockwise_stack_matches_whole_stack_section_by_section(tmp_path):
    """The 2D EM preset on a TIFF stack of two ISBI 2012 validation slices (cropped to 288 x 272), block-wise in
    blocks of 1 section and through inference.json, one pass in fp32: the same masks, and neuron segments numbered
    over the stack but never joined across sections."""
    import tifffile

    isbi = SHARED_DATA / "isbi2012" / "train" / "image"
    if not isbi.is_dir():
        pytest.skip(f"needs ISBI 2012 at {isbi.parent.parent}: set R2ATTUNET_DATA, or {GET_DATA['isbi2012']}")
    stack = np.stack([np.asarray(Image.open(isbi / f"{k}.png")) for k in (20, 21)])[:, :288, :272]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", stack)
    args = ["--tta", "false", "--precision", "fp32"]
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em2d.json','configs/blocks.json']",
        "--dataset_dir",
        str(tmp_path / "in" / "stack.tif"),
        "--output_dir",
        str(tmp_path / "blocks"),
        "--block_shape",
        "[1,288,272]",
        *args,
    )
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em2d.json']",
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "whole"),
        "--progress_bar",
        "false",
        *args,
    )
    seg, whole = (tifffile.imread(tmp_path / d / "stack_seg.tif") for d in ("blocks", "whole"))
    assert seg.shape == stack.shape and np.array_equal(seg, whole)
    ids = tifffile.imread(tmp_path / "blocks" / "stack_instances.tif")
    assert ids.max() == tifffile.imread(tmp_path / "whole" / "stack_instances.tif").max()
    sections = [set(np.unique(ids[z][ids[z] > 0]).tolist()) for z in range(2)]
    assert sections[0] and sections[1] and not sections[0] & sections[1]  # no id spans two sections
