"""EM presets: ISBI 2012 membranes in 2D (configs/em2d.json) and volumetric EM in 3D (configs/em3d.json).

Preparation, download, the stack reader and writer, the challenge metrics, and the presets run through
``monai.bundle`` on small real crops of ISBI 2012 and of the Drosophila VNC stack (never copied into the repo)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from conftest import BUNDLE, GET_DATA, SHARED_DATA, run_bundle, run_module
from scripts.check import InputCheck, check_datalist
from scripts.data import prepare_isbi2012, prepare_vnc
from scripts.download import ISBI2012_FILES, download_isbi2012
from scripts.evaluation import ForegroundRandInfo
from scripts.inflate import inflate
from scripts.instances import join_boundaries
from scripts.metrics import dice, iou, rand_info_scores
from scripts.networks import R2AttUNet
from scripts.readers import StackReader
from scripts.report import logs as report_logs
from scripts.writers import AtomicStackWriter

ISBI = SHARED_DATA / "isbi2012"
VNC = SHARED_DATA / "drosophila_vnc_sstem" / "stack1"
TINY_2D = ["--network_def#channels", "[8,16,32]", "--patch_size", "[64,64]"]
# 64x64 in plane: 4 in-plane poolings leave 4x4; at 2x2, PyTorch 2.13's CPU bf16 Conv3d backward intermittently
# returns non-finite gradients (docs, Known issues)
TINY_3D = ["--network_def#channels", "[4,8,16,32,64]", "--patch_size", "[64,64,4]"]
IDENTITY = ["--network_def", "$torch.nn.Identity()", "--load_weights", "false"]


@pytest.fixture(scope="module")
def isbi_pages():
    if not ISBI.is_dir():
        pytest.skip(f"needs ISBI 2012 at {ISBI}: set R2ATTUNET_DATA, or {GET_DATA['isbi2012']}")
    images = [np.asarray(Image.open(ISBI / "train" / "image" / f"{k}.png")) for k in range(25)]
    labels = [np.asarray(Image.open(ISBI / "train" / "label" / f"{k}.png")) for k in range(25)]
    return np.stack(images), np.stack(labels)


@pytest.fixture(scope="module")
def vnc_stack():
    if not VNC.is_dir():
        pytest.skip(f"needs the Drosophila VNC stack at {VNC}: set R2ATTUNET_DATA, or {GET_DATA['vnc']}")
    return VNC


def test_prepare_isbi2012_png_and_tiff_layouts_agree(isbi_pages, tmp_path):
    from_png = prepare_isbi2012(ISBI, tmp_path / "png")
    assert [len(from_png[k]) for k in ("training", "validation", "test")] == [20, 5, 30]
    assert [it["id"] for it in from_png["validation"]] == [f"slice_{k}" for k in range(20, 25)]
    label = np.asarray(Image.open(tmp_path / "png" / "labels" / "slice_20.png"))
    image = np.asarray(Image.open(tmp_path / "png" / "images" / "slice_20.png"))
    assert set(np.unique(label)) == {0, 255}
    assert 0.15 < (label == 255).mean() < 0.3  # membrane is the minority class (about 22 %)
    assert image[label == 255].mean() < image[label == 0].mean()  # membranes are dark in EM
    images, labels = isbi_pages
    tifffile.imwrite(tmp_path / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    prepare_isbi2012(tmp_path, tmp_path / "tif", val_slices=[0, 1])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "tif" / "labels" / "slice_20.png")), label)
    with pytest.raises(ValueError, match="val_slices"):
        prepare_isbi2012(tmp_path, tmp_path / "bad", val_slices=[30])


@pytest.fixture()
def isbi_server(isbi_pages, tmp_path):
    """An HTTP server on 127.0.0.1 serving the three ISBI 2012 stacks (3 real pages each)."""
    images, labels = isbi_pages
    www = tmp_path / "www"
    www.mkdir()
    tifffile.imwrite(www / "train-volume.tif", images[:3], photometric="minisblack")
    tifffile.imwrite(www / "train-labels.tif", labels[:3], photometric="minisblack")
    tifffile.imwrite(www / "test-volume.tif", images[3:6], photometric="minisblack")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    httpd.shutdown()


def test_download_isbi2012(isbi_server, tmp_path):
    url, www = isbi_server
    out = download_isbi2012(
        str(tmp_path / "dl"), base_url=url, verify=False, prepare=True, val_slices=[2], progress=False
    )
    recorded = dict(line.split()[::-1] for line in (out / "md5.txt").read_text().splitlines())
    assert recorded == {n: hashlib.md5((www / n).read_bytes()).hexdigest() for n in ISBI2012_FILES}
    datalist = json.loads((out / "prepared" / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 3]
    # the pinned checksums of the challenge's files reject these 3-page copies
    with pytest.raises(Exception, match="md5"):
        download_isbi2012(str(tmp_path / "dl2"), base_url=url, verify=True, progress=False)


def test_rand_info_scores_match_the_challenge_definitions(isbi_pages):
    membrane = isbi_pages[1][20] == 0
    assert rand_info_scores(membrane, membrane) == (1.0, 1.0)
    split = membrane.copy()
    split[:, 256] = True  # one cut through every cell: a split error
    merged = membrane.copy()
    merged[200:300, 200:300] = False  # membranes erased in a square: the cells there merge
    from skimage.metrics import adapted_rand_error

    for pred in (split, merged):
        v_rand, v_info = rand_info_scores(pred, membrane)
        # predicted boundary pixels join their nearest region, as the challenge's thinning does
        truth, segs = ndimage.label(~membrane)[0], join_boundaries(ndimage.label(~pred)[0])
        # scikit-image leaves out self-pairs (n from each sum of squares): equal up to that
        assert v_rand == pytest.approx(1 - adapted_rand_error(truth, segs, ignore_labels=(0,))[0], abs=1e-4)
        assert 0 < v_rand < 1 and 0 < v_info < 1
    metric = ForegroundRandInfo("info")
    metric(
        torch.as_tensor(np.stack([membrane, split]))[:, None].float(),
        torch.as_tensor(np.stack([membrane] * 2))[:, None].float(),
    )
    assert metric.aggregate().item() == pytest.approx((1 + rand_info_scores(split, membrane)[1]) / 2)


def test_stack_reader_and_writer_round_trip(tmp_path):
    zyx = np.random.default_rng(0).integers(0, 255, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", zyx, photometric="minisblack")
    xyz, meta = StackReader().get_data(StackReader().read(str(tmp_path / "s.tif")))
    assert xyz.shape == (30, 20, 3) and meta["stack"]
    assert np.array_equal(xyz[:, :, 1], zyx[1].T)
    writer = AtomicStackWriter(output_dtype=np.uint8)
    writer.set_data_array(torch.as_tensor(xyz[None]), channel_dim=0)
    writer.set_metadata({"filename_or_obj": str(tmp_path / "s.tif")})
    writer.write(tmp_path / "out" / "s_seg.png")  # the extension follows the input
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "s_seg.tif"), zyx)
    affine = np.diag([0.5, 0.5, 4.0, 1.0])
    writer.set_metadata({"filename_or_obj": str(tmp_path / "v.nii.gz"), "original_affine": affine})
    writer.write(tmp_path / "out" / "v_seg.png")
    nii = nib.load(tmp_path / "out" / "v_seg.nii.gz")
    assert np.array_equal(np.asarray(nii.dataobj), xyz) and np.allclose(nii.affine, affine)
    writer.set_metadata({"filename_or_obj": str(tmp_path / "sec.01.tif")})  # a dotted name keeps its dots
    writer.write(tmp_path / "out" / "sec.01_seg.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "s_seg.tif",
        "sec.01_seg.tif",
        "v_seg.nii.gz",
    ]  # no partial files


def test_planar_tiff_of_three_or_four_pages_is_read_as_sections(tmp_path, caplog):
    """Plain ``tifffile.imwrite`` of a (Z, Y, X) array with Z = 3 or 4 stores one page of planar colour samples: the
    stack reader (EM presets) reads it as Z sections and says so in one line; a contiguous RGB page stays one image."""
    from scripts.readers import read_stack

    zyx = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16).astype(np.uint8)
    tifffile.imwrite(tmp_path / "three.tif", zyx)
    with caplog.at_level("INFO", logger="scripts.readers"):
        assert np.array_equal(read_stack(tmp_path / "three.tif"), zyx)
    assert "three.tif: one page of 3 planar samples, read as 3 sections" in caplog.text
    tifffile.imwrite(tmp_path / "four.tif", np.zeros((4, 16, 16), np.uint8), photometric="rgb", planarconfig="separate")
    assert read_stack(tmp_path / "four.tif").shape == (4, 16, 16)
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    caplog.clear()
    assert read_stack(tmp_path / "pages.tif").shape == (3, 16, 16) and "planar" not in caplog.text
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    assert read_stack(tmp_path / "rgb.tif").shape == (1, 16, 16)


def test_checks_name_stacks_and_volumes(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.uint8), np.eye(4)), tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 4), np.uint8), np.eye(4)), tmp_path / "lab.nii.gz")
    items = [{"image": str(tmp_path / "stack.tif")}, {"image": str(tmp_path / "vol.nii.gz")}]
    with pytest.raises(ValueError, match="no readable input"):
        InputCheck(items)  # a 2D configuration refuses stacks, naming the presets
    assert len(InputCheck(items, stacks=True).good) == 2
    # inputs whose outputs would share a name: the second is refused, named with the first
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    check = InputCheck(items + [{"image": str(tmp_path / "vol.tif")}], stacks=True)
    assert (
        len(check.good) == 2 and "would overwrite those of" in str(check.bad[0]) and "vol.nii.gz" in str(check.bad[0])
    )
    # the output folder is the input folder: earlier outputs are not segmented again
    tifffile.imwrite(tmp_path / "stack_seg.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    rerun = items + [{"image": str(tmp_path / "stack_seg.tif")}]
    assert len(InputCheck(rerun, stacks=True, output_dir=str(tmp_path)).good) == 2
    assert len(InputCheck(rerun, stacks=True, output_dir=str(tmp_path / "elsewhere")).good) == 3
    problems = check_datalist(
        [{"image": str(tmp_path / "vol.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}], stacks=True
    )
    assert any("lab.nii.gz: mask size (32, 30, 4) differs from image size (32, 32, 4)" in str(p) for p in problems)


def _identity_expectation(zyx: np.ndarray) -> np.ndarray:
    """What inference with an identity network writes: pixels above the input's mean (NormalizeIntensityd, then
    sigmoid > 0.5), as 255."""
    return np.where(zyx.astype(np.float32) > zyx.astype(np.float32).mean(), 255, 0).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("preset,tta", [("em2d", "false"), ("em3d", "false"), ("em3d", "true")])
def test_inference_keeps_shape_orientation_and_geometry(preset, tta, isbi_pages, tmp_path):
    """An identity network makes the output predictable: TIFF stacks come back as (Z, Y, X) TIFFs, PNGs as PNGs and
    NIfTI volumes with their affine, each pixel in its place (em2d: section by section, em3d: the whole volume; with
    test-time flips, ``--tta true``, every flip is mapped back to its place)."""
    zyx = isbi_pages[0][:3, :70, :90]
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "stack.tif", zyx, photometric="minisblack")
    affine = np.array([[0.0046, 0, 0, 10], [0, 0.0046, 0, -5], [0, 0, 0.05, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.transpose(zyx, (2, 1, 0)), affine), src / "vol.nii.gz")
    files = ["stack_seg.tif", "vol_seg.nii.gz", "summary.csv"]
    files += ["stack_instances.tif", "stack_objects.csv", "vol_instances.nii.gz", "vol_objects.csv"]
    if preset == "em2d":
        Image.fromarray(zyx[0]).save(src / "one.png")
        files += ["one_seg.png", "one_instances.png", "one_objects.csv"]
    run_bundle(
        "run",
        "--config_file",
        f"['configs/inference.json','configs/{preset}.json']",
        *IDENTITY,
        "--dataset_dir",
        str(src),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "false",
        "--tta",
        tta,
        "--min_object_size",
        "0",
        "--mask_erosion",
        "0",  # the identity network's mask, unthinned
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files)
    # objects in the input's format: neuron segments section by section (em2d), 3D objects (em3d)
    ids = tifffile.imread(tmp_path / "out" / "stack_instances.tif")
    assert ids.shape == zyx.shape and ids.max() > 1
    assert np.allclose(nib.load(tmp_path / "out" / "vol_instances.nii.gz").affine, affine)
    header = (tmp_path / "out" / "vol_objects.csv").read_text().splitlines()[0]
    assert header.startswith("id,area,centroid_z,centroid_y,centroid_x") and header.endswith(
        ",volume"
    )  # no unit in this header
    seg = tifffile.imread(tmp_path / "out" / "stack_seg.tif")
    assert seg.dtype == np.uint8 and seg.shape == zyx.shape
    assert np.array_equal(seg, _identity_expectation(zyx))
    nii = nib.load(tmp_path / "out" / "vol_seg.nii.gz")
    assert np.allclose(nii.affine, affine) and nii.shape == (90, 70, 3)
    assert np.array_equal(np.asarray(nii.dataobj), np.transpose(_identity_expectation(zyx), (2, 1, 0)))
    if preset == "em2d":
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "one_seg.png")), _identity_expectation(zyx[0]))


@pytest.mark.slow
def test_em2d_trains_an_epoch_and_segments_a_stack(isbi_pages, tmp_path):
    """The 2D preset on 128x128 crops of 4 real ISBI slices (3 training, 1 validation), then its weights segment a
    TIFF stack slice by slice."""
    images, labels = isbi_pages
    tifffile.imwrite(tmp_path / "train-volume.tif", images[:4, :128, :128], photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels[:4, :128, :128], photometric="minisblack")
    prepare_isbi2012(tmp_path, tmp_path / "data", val_slices=[3])
    out = tmp_path / "run"
    args = ["--dataset_dir", str(tmp_path / "data"), "--ckpt_dir", str(out / "models"), *TINY_2D]
    proc = run_bundle(
        "run",
        "--config_file",
        "['configs/train.json','configs/em2d.json']",
        *args,
        "--num_epochs",
        "2",
        "--val_interval",
        "1",
        "--output_dir",
        str(out / "runs"),
        "--progress_bar",
        "false",
        "--num_workers",
        "0",
    )
    assert (out / "models" / "model.pt").is_file()
    # the training log drawn as validation curves (scripts.report logs): 3 slices, batch 2 -> 1 step an epoch
    (tmp_path / "train.log").write_text(proc.stdout + proc.stderr)
    curves = report_logs({"em2d": str(tmp_path / "train.log")}, str(tmp_path / "curves.png"))
    assert curves["em2d"]["steps_per_epoch"] == 1 and curves["em2d"]["steps"] == [1, 2]
    assert all(0 <= d <= 1 for d in curves["em2d"]["val_mean_dice"]) and (tmp_path / "curves.png").stat().st_size > 0
    shutil.rmtree(out / "models" / "ensemble")  # only model.pt, as models/em2d ships: --ensemble false needs no more
    run_bundle(
        "run",
        "--config_file",
        "['configs/train.json','configs/evaluate.json','configs/em2d.json']",
        *args,
        "--eval_dir",
        str(out / "eval"),
        "--ensemble",
        "false",
        "--num_workers",
        "0",
        "--tta",
        "true",
    )
    metrics = (out / "eval" / "best" / "metrics.csv").read_text()
    for name in ("val_mean_dice", "val_interior_pooled_dice", "val_rand_score", "val_info_score"):
        assert name in metrics
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", images[20:22, :100, :120], imagej=True)  # as Fiji writes stacks
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em2d.json']",
        *args[2:],
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "seg"),
        "--progress_bar",
        "false",
    )
    seg = tifffile.imread(tmp_path / "seg" / "stack_seg.tif")
    assert seg.shape == (2, 100, 120) and set(np.unique(seg)) <= {0, 255}


@pytest.mark.slow
def test_em3d_trains_an_epoch_and_segments_tiff_and_nifti(vnc_stack, tmp_path):
    """The 3D preset on a 64x64x6 crop of the real VNC stack (4 sections training, 2 validation), then its weights
    segment a TIFF stack and a NIfTI volume, keeping shape and affine."""
    prepare_vnc(vnc_stack, tmp_path / "full", val_sections=[4, 5])
    data = tmp_path / "data"
    lists = json.loads((tmp_path / "full" / "volumes" / "datalist.json").read_text())
    for key in ("training", "validation"):
        for kind in ("images", "labels"):
            nii = nib.load(tmp_path / "full" / "volumes" / kind / f"{key}.nii.gz")
            crop = np.asarray(nii.dataobj)[448:512, 448:512]
            (data / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(crop, nii.affine), data / kind / f"{key}.nii.gz")
    (data / "datalist.json").write_text(json.dumps({k: lists[k] for k in ("training", "validation")}))
    out = tmp_path / "run"
    # the preset's recipe: start from 2D weights of the same channels, inflated to 3D (here random ones)
    torch.save(R2AttUNet(2, 1, 1, channels=(4, 8, 16, 32, 64)).state_dict(), tmp_path / "flat.pt")
    configs = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "em3d.json")]
    overrides = {"network_def#channels": [4, 8, 16, 32, 64]}
    assert inflate(str(tmp_path / "flat.pt"), str(tmp_path / "init.pt"), configs, **overrides) < 1e-6
    run_bundle(
        "run",
        "--config_file",
        "['configs/train.json','configs/em3d.json']",
        "--dataset_dir",
        str(data),
        "--ckpt_dir",
        str(out / "models"),
        "--output_dir",
        str(out / "runs"),
        *TINY_3D,
        "--num_epochs",
        "3",
        "--val_interval",
        "2",
        "--checkpoint_interval",
        "2",
        "--progress_bar",
        "false",
        "--num_workers",
        "0",
        "--memory_saving",
        "true",
        "--finetune",
        "true",
        "--finetune_model_path",
        str(tmp_path / "init.pt"),
    )
    assert (out / "models" / "model.pt").is_file()
    # 3 epochs, validation every 2: validated at 2 and after the last epoch, whose state is saved too
    assert [p.name for p in (out / "models" / "checkpoints").iterdir()] == ["checkpoint_3.pt"]
    state = torch.load(out / "models" / "checkpoints" / "checkpoint_3.pt", weights_only=False)
    assert state["lr_scheduler"]["last_epoch"] == 2  # the plateau schedule steps once per validation, not per epoch
    src = tmp_path / "in"
    src.mkdir()
    volume = nib.load(data / "images" / "validation.nii.gz")
    volume.header.set_xyzt_units("micron")  # as scripts.prepare vnc writes them
    nib.save(volume, src / "vol.nii.gz")
    tifffile.imwrite(src / "stack.tif", np.transpose(np.asarray(volume.dataobj), (2, 1, 0)), photometric="minisblack")
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em3d.json']",
        "--ckpt_dir",
        str(out / "models"),
        *TINY_3D,
        "--dataset_dir",
        str(src),
        "--output_dir",
        str(tmp_path / "seg"),
        "--progress_bar",
        "false",
        "--save_overlay",
        "true",
    )
    nii = nib.load(tmp_path / "seg" / "vol_seg.nii.gz")
    assert nii.shape == volume.shape and np.allclose(nii.affine, volume.affine)
    assert nii.header.get_xyzt_units()[0] == "micron" and nii.header["sform_code"] == volume.header["sform_code"]
    # overlays in the input's format: RGB24 NIfTI, RGB TIFF pages
    assert nib.load(tmp_path / "seg" / "vol_overlay.nii.gz").shape == volume.shape
    assert tifffile.imread(tmp_path / "seg" / "stack_overlay.tif").shape == (2, 64, 64, 3)
    seg = tifffile.imread(tmp_path / "seg" / "stack_seg.tif")
    assert seg.shape == (2, 64, 64) and seg.dtype == np.uint8
    assert np.array_equal(seg, np.transpose(np.asarray(nii.dataobj), (2, 1, 0)))  # same result for both formats


def _preset_network(*presets: str) -> torch.nn.Module:
    """The network ``inference.json`` builds with ``configs/<preset>.json`` of each preset merged last, in order."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / f"{name}.json") for name in ("inference", *presets)])
    return parser.get_parsed_content("network_def")


@pytest.mark.slow
def test_inflate_command_turns_the_2d_mitochondria_weights_into_em3d_weights(tmp_path):
    """``python -m scripts.inflate`` with the shipped 2D weights and the 3D preset as it is (the recipe of
    models/em3d): the output loads strictly into the preset's network, which segments sections like the 2D one."""
    proc = run_module(
        "scripts.inflate",
        "--weights",
        "models/em2d_mito/model.pt",
        "--output",
        str(tmp_path / "init.pt"),
        timeout=300,
    )
    assert "largest logit difference to the 2D network" in proc.stderr
    network = _preset_network("em3d")
    network.load_state_dict(torch.load(tmp_path / "init.pt", weights_only=True))
    assert network.kernel_size[0] == (3, 3, 1) and network.strides[0] == (2, 2, 1)
    bad = run_module(
        "scripts.inflate",
        "--weights",
        "models/em2d/model.pt",
        "--output",
        str(tmp_path / "x.pt"),
        "--network_def#channels",
        "[8,16,32,64,128]",
        check=False,
        timeout=300,
    )
    assert bad.returncode != 0 and "models/em2d/model.pt" in bad.stderr and "same channels" in bad.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    "presets,weights", [(["em2d"], "em2d"), (["em3d"], "em3d"), (["em2d", "em2d_mito"], "em2d_mito")]
)
def test_shipped_em_weights_load_into_their_presets(presets, weights):
    network = _preset_network(*presets)
    state = torch.load(BUNDLE / "models" / weights / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))  # strict: every key and shape


@pytest.mark.slow
def test_shipped_em2d_weights_segment_an_unseen_isbi_slice(isbi_pages, tmp_path):
    """Slice 20 is in the validation split of the shipped em2d weights (never trained on); measured membrane Dice
    0.814 with the preset's test-time flips (docs/figures/em2d_examples.png)."""
    images, labels = isbi_pages
    (tmp_path / "in").mkdir()
    Image.fromarray(images[20]).save(tmp_path / "in" / "slice_20.png")
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em2d.json']",
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "false",
    )
    pred = np.asarray(Image.open(tmp_path / "out" / "slice_20_seg.png")) > 0
    membrane = labels[20] == 0
    assert dice(pred, membrane) > 0.79, dice(pred, membrane)


@pytest.mark.slow
def test_shipped_em2d_mito_weights_segment_an_unseen_vnc_section(vnc_stack, tmp_path):
    """Section 12 is in the validation sections (10-15) of models/em2d_mito (trained on sections 0-9); with the
    preset's test-time flips the mitochondria IoU of the six validation sections pooled is 0.863 (docs, EM results),
    of this one 0.832."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "section_12.tif").write_bytes((vnc_stack / "raw" / "12.tif").read_bytes())
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em2d.json','configs/em2d_mito.json']",
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "false",
    )
    pred = np.squeeze(tifffile.imread(tmp_path / "out" / "section_12_seg.tif")) > 0
    mito = np.asarray(Image.open(vnc_stack / "mitochondria" / "12.png")) > 0
    assert pred.shape == mito.shape
    assert iou(pred, mito) > 0.8, iou(pred, mito)


@pytest.mark.slow
def test_shipped_em3d_weights_segment_unseen_vnc_sections(vnc_stack, tmp_path):
    """Sections 10-15 are the validation sections of models/em3d (trained on sections 0-9): a 384x384 crop of them as a
    TIFF stack, segmented in 3D with the preset's test-time flips: IoU 0.865 measured (the six whole sections pooled:
    0.864)."""
    raw = np.stack([tifffile.imread(vnc_stack / "raw" / f"{k}.tif") for k in range(10, 16)])[:, 320:704, 320:704]
    mito = np.stack([np.asarray(Image.open(vnc_stack / "mitochondria" / f"{k}.png")) > 0 for k in range(10, 16)])
    mito = mito[:, 320:704, 320:704]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "sections.tif", raw, photometric="minisblack")
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/em3d.json']",
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "false",
    )
    pred = tifffile.imread(tmp_path / "out" / "sections_seg.tif") > 0
    assert pred.shape == mito.shape
    assert iou(pred, mito) > 0.84, iou(pred, mito)


def test_report_names_an_unparsed_dict_option():
    """fire hands `--preds "{'a': runs/a.nii.gz}"` (unquoted path) over as a string: the error says how to quote it."""
    from scripts.report import volumes

    for fn, option in (
        (lambda v: volumes("label.nii.gz", v, "out.png"), "preds"),
        (lambda v: report_logs(v, "o.png"), "logs"),
    ):
        with pytest.raises(ValueError, match=f"--{option} must be a dict of name: path with each path quoted"):
            fn("{'a': runs/a.nii.gz}")


def test_report_tolerance_hand_computed():
    """scripts.report tolerance on a 4-px band (rows 4-27, columns 10-13) against a prediction 1 px wider on the left
    plus a far 2x2 blob: TP 96, FP 28 (24 near the label, 4 far), FN 0; counts worked out by hand."""
    from scripts.report import score_tolerance

    label = np.zeros((32, 32), bool)
    label[4:28, 10:14] = True
    pred = label.copy()
    pred[4:28, 9] = True
    pred[1:3, 25:27] = True
    s = score_tolerance([(pred, label)], pixels=(1, 2))
    assert s["pooled Dice"] == pytest.approx(192 / 220)
    assert s["errors within 1"] == pytest.approx(24 / 28) and s["errors within 2"] == pytest.approx(24 / 28)
    assert s["Dice forgiving 1"] == pytest.approx(192 / 196)
    # eroded by 1: columns 11-12, rows 5-26 (44 px); dilated by 1: columns 9-14 x 24 rows + 4 px above and below (152)
    assert s["label eroded 1"] == pytest.approx(88 / 140) and s["label dilated 1"] == pytest.approx(192 / 248)
    # eroded by 2: nothing is 3 px from the outside; dilated by 2: columns 8-15 x 24 rows + (6 + 4) above and below
    assert s["label eroded 2"] == 0 and s["label dilated 2"] == pytest.approx(192 / 308)
    assert 0 < s["surface Dice 1"] < 1  # the blob's edge is far from the label's
    band = label.copy()
    band[4:28, 9] = True
    wider = score_tolerance([(band, label)], pixels=(0.5, 1))
    assert wider["surface Dice 1"] == pytest.approx(1.0) and wider["surface Dice 0.5"] < 1
    assert wider["errors within 1"] == 1 and wider["Dice forgiving 1"] == 1


@pytest.mark.slow
def test_report_tolerance_on_isbi_labels(isbi_pages, tmp_path):
    """`python -m scripts.report tolerance` on ISBI slices 20-24 with the labels as predictions: Dice 1, and the labels
    drawn 1 px narrower on each side score 0.8500 against themselves (docs, EM results), 1 px wider 0.887."""
    _, labels = isbi_pages
    items = []
    for k in range(20, 25):
        membrane = np.where(labels[k] == 0, 255, 0).astype(np.uint8)  # ISBI labels: membrane = 0
        Image.fromarray(membrane).save(tmp_path / f"slice_{k}.png")
        (tmp_path / "pred").mkdir(exist_ok=True)
        Image.fromarray(membrane).save(tmp_path / "pred" / f"slice_{k}_seg.png")
        items.append({"image": str(tmp_path / f"slice_{k}.png"), "label": str(tmp_path / f"slice_{k}.png")})
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": items}))
    proc = run_module(
        "scripts.report",
        "tolerance",
        "--datalist",
        str(tmp_path / "datalist.json"),
        "--pred_dir",
        str(tmp_path / "pred"),
        "--pixels",
        "1",
        "--out",
        str(tmp_path / "tolerance.json"),
        timeout=300,
    )
    assert "| pooled Dice | errors within 1 |" in proc.stdout
    s = json.loads((tmp_path / "tolerance.json").read_text())["scores"]
    assert s["pooled Dice"] == 1 and s["Dice forgiving 1"] == 1 and s["surface Dice 1"] == pytest.approx(1)
    assert s["label eroded 1"] == pytest.approx(0.8500, abs=5e-4) and s["label dilated 1"] == pytest.approx(
        0.8872, abs=5e-4
    )


@pytest.mark.slow
def test_stack_checks_name_what_is_wrong(tmp_path, caplog):
    """EM inputs: counts by file, stack sizes, one message per unreadable file, mask values, (Z, Y, X) NIfTI, the
    `python -m scripts.check ... --stacks true` commands, and 16-bit colour TIFFs read without wrapping."""
    from scripts.readers import read_stack

    vol = np.random.default_rng(0).integers(0, 255, (32, 32, 4), dtype=np.uint8)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4, 2), np.uint8), np.eye(4)), tmp_path / "four_d.nii.gz")
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((2, 4, 4), np.uint8), photometric="minisblack")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    items = [{"image": str(tmp_path / n)} for n in ("vol.nii.gz", "four_d.nii.gz", "small.tif", "broken.tif")]
    check = InputCheck(items, stacks=True)
    assert len(check.good) == 1 and len(check.bad) == 3  # one problem per file: no spurious channel errors
    assert "volume of shape (2, 4, 4) is empty or smaller than 8x8" in str(check.bad[1])
    assert str(check.bad[2]).count("unreadable") == 1
    with pytest.raises(
        SystemExit, match=r"3 input\(s\) not segmented(.|\n)*1 input\(s\) segmented: 0 file\(s\) written; 3 refused"
    ):
        check.raise_if_bad()
    # a NIfTI saved as (Z, Y, X): a note; masks with more than two values: a note naming them
    nib.save(nib.Nifti1Image(np.zeros((4, 64, 64), np.uint8), np.eye(4)), tmp_path / "zyx.nii.gz")
    with caplog.at_level("WARNING", logger="scripts.check"):
        InputCheck([{"image": str(tmp_path / "zyx.nii.gz")}], stacks=True)
    assert "if it was saved as (Z, Y, X), transpose it" in caplog.text
    nib.save(
        nib.Nifti1Image(np.where(vol > 200, 7, np.where(vol > 100, 300, 0)).astype(np.uint16), np.eye(4)),
        tmp_path / "ids.nii.gz",
    )
    problems = check_datalist(
        [{"image": str(tmp_path / "vol.nii.gz"), "label": str(tmp_path / "ids.nii.gz")}], stacks=True
    )
    assert any("mask with 3 values (0, 7, 300)" in str(p) and not p.fatal for p in problems)
    nib.save(nib.Nifti1Image(np.where(vol > 200, 0.4, 0).astype(np.float32), np.eye(4)), tmp_path / "faint.nii.gz")
    problems = check_datalist(
        [{"image": str(tmp_path / "vol.nii.gz"), "label": str(tmp_path / "faint.nii.gz")}], stacks=True
    )
    assert any("empty mask (no foreground above 0.5)" in str(p) for p in problems)  # as training binarises
    # the command line checks stacks with --stacks true
    (tmp_path / "ok").mkdir()
    shutil.copy(tmp_path / "vol.nii.gz", tmp_path / "ok" / "vol.nii.gz")
    for stacks, rc in (("false", 1), ("true", 0)):
        proc = run_module("scripts.check", "images", "--folder", str(tmp_path / "ok"), "--stacks", stacks, check=False)
        assert proc.returncode == rc, proc.stdout + proc.stderr
    # 16-bit colour pages: luminance in float, not wrapped to 8 bits
    rgb16 = np.random.default_rng(1).integers(0, 16383, (2, 16, 16, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    assert np.allclose(read_stack(tmp_path / "rgb16.tif"), rgb16 @ np.array([0.299, 0.587, 0.114]), atol=0.01)


def test_prepare_vnc_layout_keeps_16_bit_sections(tmp_path):
    """Your own stack in the VNC layout (raw/NN.tif, <target>/NN.png): 16-bit sections keep their values in the
    sections for 2D and the volumes for 3D; other pixel types are refused by name."""
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "raw").mkdir(parents=True)
    (tmp_path / "src" / "mito").mkdir()
    sections = rng.integers(0, 4000, (3, 32, 40)).astype(np.uint16)
    for k, sec in enumerate(sections):
        tifffile.imwrite(tmp_path / "src" / "raw" / f"{k:02d}.tif", sec)
        Image.fromarray(((sec > 3000) * 255).astype(np.uint8)).save(tmp_path / "src" / "mito" / f"{k:02d}.png")
    prepare_vnc(tmp_path / "src", tmp_path / "out", target="mito", val_sections=[2])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "slices" / "images" / "01.png")), sections[1])
    volume = np.asarray(nib.load(tmp_path / "out" / "volumes" / "images" / "training.nii.gz").dataobj)
    assert volume.dtype == np.uint16 and np.array_equal(volume[..., 1].T, sections[1])
    tifffile.imwrite(tmp_path / "src" / "raw" / "00.tif", sections[0].astype(np.float32))
    with pytest.raises(ValueError, match="00.tif: float32 pixels; expected 8- or 16-bit"):
        prepare_vnc(tmp_path / "src", tmp_path / "out2", target="mito", val_sections=[2])
