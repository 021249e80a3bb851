import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DSB2018_FIXES, SAMPLE
from scripts import InputError
from scripts.data import (
    image_group,
    list_images,
    load_datalist,
    prepare_dsb2018,
    split_datalist,
    to_colour,
    to_grayscale,
)
from scripts.transforms import LUMINANCE, RandStainGrayd

FIXED_ID = "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552"  # corrected in the fixes
REMOVED_ID = "12aeefb1b522b283819b12e4cfaf6b13c1264c0aadac3412b4edd2ace304cb40"  # dropped by the fixes
COLOUR_ID = "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64"
PLAIN_ID = "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1"


def test_prepare_real_images(dsb2018_dir, tmp_path):
    ids = [PLAIN_ID, COLOUR_ID, FIXED_ID]
    datalist = prepare_dsb2018(dsb2018_dir, tmp_path, ids=ids, val_fraction=0.34, seed=0, progress=False)
    items = datalist["training"] + datalist["validation"]
    assert sorted(it["id"] for it in items) == sorted(ids)
    assert json.loads((tmp_path / "datalist.json").read_text()) == datalist
    for it in items:
        sid = it["id"]
        image = Image.open(tmp_path / it["image"])
        label = np.asarray(Image.open(tmp_path / it["label"]))
        rgba = Image.open(dsb2018_dir / sid / "images" / f"{sid}.png")
        # colour images keep their colour (stain augmentation), the others are stored gray; same size
        assert image.mode == ("RGB" if it["group"] == "colour" else "L") and image.size == rgba.size
        assert np.array_equal(np.asarray(image), np.asarray(rgba.convert(image.mode)))
        assert np.array_equal(np.asarray(to_grayscale(image)), np.asarray(rgba.convert("L")))  # what inference reads
        union = np.zeros_like(label, dtype=bool)
        masks = sorted((dsb2018_dir / sid / "masks").glob("*.png"))
        for m in masks:
            union |= np.asarray(Image.open(m)) > 0
        assert np.array_equal(label > 0, union)  # the nucleus mask is the logical OR of every nucleus mask
        # one id per nucleus mask (1..N), 8-bit up to 255 nuclei
        assert set(np.unique(label)) - {0} == set(range(1, len(masks) + 1)) and label.dtype == np.uint8
        first = np.asarray(Image.open(masks[0])) > 0
        assert not ((label == 1) & ~first).any()  # id 1 lies inside the first mask
        assert (label[first] == 1).mean() > 0.9  # where masks overlap, the later one wins
    groups = {it["id"]: it["group"] for it in items}
    assert groups[COLOUR_ID] == "colour" and groups[PLAIN_ID] == "fluorescence"


def test_prepare_applies_fixes(dsb2018_dir, tmp_path):
    if not DSB2018_FIXES.is_dir():
        pytest.skip(f"needs the DSB2018 community fixes at {DSB2018_FIXES} (R2ATTUNET_DATA)")
    prepare_dsb2018(
        dsb2018_dir, tmp_path, fixes=DSB2018_FIXES, ids=[FIXED_ID, PLAIN_ID], val_fraction=0.5, progress=False
    )
    label = np.asarray(Image.open(tmp_path / "labels" / f"{FIXED_ID}.png")) > 0
    fixed = np.zeros_like(label)
    for m in (DSB2018_FIXES / "stage1_train" / FIXED_ID / "masks").glob("*.png"):
        fixed |= np.asarray(Image.open(m)) > 0
    assert np.array_equal(label, fixed)
    with pytest.raises(ValueError, match=REMOVED_ID[:12]):
        prepare_dsb2018(dsb2018_dir, tmp_path / "x", fixes=DSB2018_FIXES, ids=[REMOVED_ID], progress=False)


def test_bad_mask_is_named(dsb2018_dir, tmp_path):
    src = tmp_path / "src" / PLAIN_ID
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    Image.open(dsb2018_dir / PLAIN_ID / "images" / f"{PLAIN_ID}.png").save(src / "images" / f"{PLAIN_ID}.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(src / "masks" / "small.png")
    with pytest.raises(ValueError, match="small.png.*differs"):
        prepare_dsb2018(tmp_path / "src", tmp_path / "out", progress=False)
    (src / "masks" / "small.png").unlink()
    with pytest.raises(ValueError, match="no nucleus masks"):
        prepare_dsb2018(tmp_path / "src", tmp_path / "out", progress=False)


def test_split_is_seeded_stratified_and_disjoint():
    items = [{"image": f"{i}.png", "label": f"{i}_l.png", "group": "a" if i < 30 else "b"} for i in range(40)]
    s1, s2 = split_datalist(items, 0.25, seed=3), split_datalist(items, 0.25, seed=3)
    assert s1 == s2
    train = {it["image"] for it in s1["training"]}
    val = {it["image"] for it in s1["validation"]}
    assert not train & val and len(train | val) == 40
    assert sum(it["group"] == "b" for it in s1["validation"]) in (2, 3)  # stratified: a quarter of each group
    assert split_datalist(items, 0.25, seed=4) != s1


def test_load_datalist_forms(tmp_path):
    train = load_datalist(SAMPLE / "datalist.json", "training")
    val = load_datalist(SAMPLE / "datalist.json", "validation")
    assert train and val and not {d["image"] for d in train} & {d["image"] for d in val}
    assert all((SAMPLE / "images").samefile(__import__("os").path.dirname(d["image"])) for d in train)
    # a plain [{"image", "label"}] list is split, never validated on its training images
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps([{"image": f"i{i}.png", "label": f"l{i}.png"} for i in range(10)]))
    t, v = load_datalist(plain, "training", val_fraction=0.2), load_datalist(plain, "validation", val_fraction=0.2)
    assert len(t) == 8 and len(v) == 2 and not {d["image"] for d in t} & {d["image"] for d in v}
    assert t[0]["image"].startswith(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_datalist(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(ValueError, match="empty"):
        load_datalist(tmp_path / "empty.json")


def test_grayscale_converter_keeps_16_bit_range():
    rgba = Image.fromarray(np.dstack([np.full((4, 4), 200, np.uint8)] * 3 + [np.full((4, 4), 255, np.uint8)]), "RGBA")
    assert to_grayscale(rgba).mode == "L" and np.asarray(to_grayscale(rgba)).max() == 200
    img16 = Image.fromarray(np.full((4, 4), 4000, np.uint16))
    assert to_grayscale(img16).mode == "F" and np.asarray(to_grayscale(img16)).max() == 4000
    assert image_group(np.zeros((4, 4, 3), np.uint8)) == "fluorescence"


def test_list_images(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b.TIF")
    (tmp_path / "notes.txt").write_text("x")
    assert [d["image"].split("/")[-1] for d in list_images(tmp_path)] == ["a.png", "b.TIF"]
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path / "..", suffixes=(".xyz",))


def test_list_images_points_zarr_and_huge_tiffs_to_blocks(tmp_path, monkeypatch):
    import tifffile

    import scripts.data

    volume = tmp_path / "volume.zarr"
    volume.mkdir()
    (volume / "zarr.json").write_text("{}")
    for folder in (volume, tmp_path):  # the array itself, or a folder holding only arrays
        with pytest.raises(InputError, match="configs/blocks.json") as e:
            list_images(folder)
        assert f"--dataset_dir {volume} " in str(e.value)
    tifffile.imwrite(tmp_path / "slide.tif", np.zeros((64, 64), np.uint8))
    assert [d["image"] for d in list_images(tmp_path)] == [str(tmp_path / "slide.tif")]  # arrays left out, warned
    monkeypatch.setattr(
        scripts.data, "available_memory", lambda: 64 * 64 * scripts.data.WHOLE_IMAGE_BYTES_PER_PIXEL - 1
    )
    with pytest.raises(InputError, match=r"slide.tif: too large for whole-image inference.*configs/blocks.json"):
        list_images(tmp_path)


def test_group_sampler_draws_rare_types_more_often():
    from collections import Counter

    from scripts.data import group_sampler

    items = [{"image": f"{i}", "group": "common"} for i in range(90)] + [
        {"image": f"r{i}", "group": "rare"} for i in range(10)
    ]
    draws = Counter(items[i]["group"] for i in group_sampler(items, power=1.0, seed=0))
    assert 35 <= draws["rare"] <= 65  # balanced: about half, against 10 % when uniform
    assert list(group_sampler(items, 0.5, seed=1)) == list(group_sampler(items, 0.5, seed=1))
    assert group_sampler(items, 0.0) is None  # uniform: the loader shuffles instead
    from scripts.data import drop_last

    assert drop_last(items, None, 4) and not drop_last(items[:3], None, 4)
    assert drop_last(items[:3], group_sampler(items, 1.0), 4)  # the sampler's length counts


def test_stain_augmentation_ends_in_gray(dsb2018_dir):
    rgba = Image.open(dsb2018_dir / COLOUR_ID / "images" / f"{COLOUR_ID}.png")
    rgb = np.asarray(to_colour(rgba)).astype(np.float32)
    image = torch.as_tensor(np.moveaxis(rgb, -1, 0))  # (3, Y, X)
    luminance = np.tensordot(np.asarray(LUMINANCE, np.float32), rgb, axes=([0], [2]))
    plain = RandStainGrayd("image", stain_prob=0, weights_prob=0, invert_prob=0)({"image": image})["image"]
    assert plain.shape == (1, *rgb.shape[:2]) and np.allclose(plain[0].numpy(), luminance, atol=1e-3)
    # within 0.5 of PIL's rounded luminance, what inference reads
    assert np.abs(plain[0].numpy() - np.asarray(to_grayscale(rgba), np.float32)).max() <= 0.5 + 1e-3
    inverted = RandStainGrayd("image", stain_prob=0, weights_prob=0, invert_prob=1)({"image": image})["image"]
    assert torch.allclose(inverted, plain.min() + plain.max() - plain)
    jitter = RandStainGrayd("image", stain_prob=1, weights_prob=1, invert_prob=0)
    jitter.set_random_state(0)
    a = jitter({"image": image})["image"]
    jitter.set_random_state(0)
    assert torch.equal(a, jitter({"image": image})["image"])  # seeded
    assert a.shape == plain.shape and not torch.allclose(a, plain, atol=1.0)  # the stains moved
    assert np.corrcoef(a.numpy().ravel(), plain.numpy().ravel())[0, 1] > 0.8  # the same picture
    gray = image[:1]  # a gray image: no stain or weight change, only the inversion
    assert torch.equal(jitter({"image": gray})["image"], gray)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        jitter({"image": image[:2]})
