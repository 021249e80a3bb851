"""Objects: training targets, instances from probabilities, the DSB2018 score and per-object measurements."""

import csv

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from scripts.evaluation import ObjectMatching
from scripts.instances import (
    DSB_THRESHOLDS,
    as_instances,
    instances_from_probabilities,
    matching_ratios,
    object_table,
    object_targets,
)
from scripts.transforms import Instancesd, LabelTargetsd, Overlayd
from scripts.writers import SaveObjectsd


def _two_objects():
    """True: a 3x3 square (id 1) and a 4x4 square (id 2). Predicted: the left 2 columns of the first (IoU 6/9), the
    second exactly, and one stray pixel."""
    true = np.zeros((10, 10), int)
    true[1:4, 1:4] = 1
    true[5:9, 5:9] = 2
    pred = np.zeros((10, 10), int)
    pred[1:4, 1:3] = 3
    pred[5:9, 5:9] = 7
    pred[0, 9] = 1
    return pred, true


def test_matching_ratios_hand_computed():
    pred, true = _two_objects()
    r = matching_ratios(pred, true)
    # IoU 0.667 matches at 0.50..0.65 (4 thresholds): TP 2, FP 1, FN 0 -> 2/3; above: TP 1, FP 2, FN 1 -> 1/4
    expected = np.array([2 / 3] * 4 + [1 / 4] * 6)
    assert np.allclose(r["ratio"], expected)
    assert r["ratio"].mean() == pytest.approx((4 * 2 / 3 + 6 / 4) / 10)  # the image's DSB2018 score
    assert np.allclose(r["precision"][:4], 2 / 3) and np.allclose(r["recall"][4:], 1 / 2)
    assert np.allclose(r["f1"][0], 2 * 2 / (2 * 2 + 1))


def test_matching_edge_cases():
    empty = np.zeros((6, 6), int)
    one = empty.copy()
    one[1:3, 1:3] = 5
    assert np.all(matching_ratios(empty, empty)["ratio"] == 1)
    assert np.all(matching_ratios(one, empty)["ratio"] == 0) and np.all(matching_ratios(empty, one)["ratio"] == 0)
    assert np.all(matching_ratios(one, one)["ratio"] == 1)
    # IoU exactly 0.5 does not match at 0.5 (the match needs IoU above the threshold)
    half = empty.copy()
    half[1:3, 1:2] = 1
    assert matching_ratios(half, one)["ratio"][0] == 0


def test_object_matching_metric_averages_images():
    pred, true = _two_objects()
    metric = ObjectMatching("dsb")
    metric(torch.as_tensor(np.stack([pred, true]))[:, None], torch.as_tensor(np.stack([true, true]))[:, None])
    assert metric.aggregate().item() == pytest.approx(((4 * 2 / 3 + 6 / 4) / 10 + 1.0) / 2)
    at50 = ObjectMatching("ratio", iou=0.5)
    at50(torch.as_tensor(pred)[None, None], torch.as_tensor(true)[None, None])
    assert at50.aggregate().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        ObjectMatching("ratio", iou=0.52)
    assert len(DSB_THRESHOLDS) == 10 and DSB_THRESHOLDS[-1] == 0.95


def _touching_discs():
    yy, xx = np.mgrid[:40, :60]
    ids = np.zeros((40, 60), np.int32)
    ids[(yy - 20) ** 2 + (xx - 20) ** 2 < 12**2] = 1
    ids[(yy - 20) ** 2 + (xx - 42) ** 2 < 12**2] = 2  # touches the first along a short line
    return ids


def test_object_targets_separate_touching_objects():
    ids = _touching_discs()
    targets = object_targets(ids)
    assert targets.shape == (2, 40, 60) and targets.dtype == np.float32
    assert np.array_equal(targets[0] > 0, ids > 0) and np.array_equal(targets[1] > 0, ids > 0)
    assert targets[1].max() == 1 and np.allclose([targets[1][ids == k].max() for k in (1, 2)], 1)  # 1 at each centre
    assert as_instances(targets[1] >= 0.5).max() == 2  # the centre map's cores are the two objects
    assert targets[1][20, 30:33].max() < 0.2  # low where the objects touch
    # a binary mask is taken as its connected components: the touching pair is one object
    assert as_instances((ids > 0).astype(np.uint8) * 255).max() == 1


def test_instances_from_probabilities_split_touching_objects():
    ids = _touching_discs()
    targets = object_targets(ids)
    instances = instances_from_probabilities(targets[0], targets[1])
    assert np.array_equal(instances > 0, ids > 0)  # the union is the mask, exactly
    assert instances.max() == 2 and matching_ratios(instances, ids)["ratio"][0] == 1
    assert instances_from_probabilities(targets[0]).max() == 1  # no centre map: connected components
    assert instances_from_probabilities(targets[0], seeds="distance", h=1.0).max() == 2  # the mask's distance map
    assert instances_from_probabilities(targets[0], targets[1], seeds="both", h=2.0).max() == 2
    with pytest.raises(ValueError, match="seeds"):
        instances_from_probabilities(targets[0], seeds="contour")
    speck = targets.copy()
    speck[:, 0, 0] = 1
    assert instances_from_probabilities(speck[0], speck[1]).max() == 3  # every foreground pixel belongs to an object
    assert instances_from_probabilities(speck[0], speck[1], min_size=2).max() == 2
    assert instances_from_probabilities(np.zeros((5, 5)), np.zeros((5, 5))).max() == 0


def test_label_targets_and_instances_transforms():
    ids = torch.as_tensor(_touching_discs(), dtype=torch.float32)[None]
    d = LabelTargetsd("label", objects=True)({"label": MetaTensor(ids)})
    assert d["label"].shape == (2, 40, 60)
    d = LabelTargetsd("label", objects=False, instances_key="label_instances")({"label": ids})
    assert d["label"].shape == (1, 40, 60) and set(d["label"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(d["label_instances"], ids)
    prob = torch.as_tensor(object_targets(ids[0].numpy()))
    out = Instancesd("pred")({"pred": prob})
    assert out["pred"].shape == (1, 40, 60) and out["instances"].max().item() == 2
    speck = prob.clone()
    speck[:, 0, 0], speck[0, 0, 2] = 1.0, 0.3  # a one-pixel object, and a background probability
    small = Instancesd("pred", min_size=2)({"pred": speck})
    assert small["pred"][0, 0, 0] == 0 and small["pred"][0, 0, 2] == 0.3  # only dropped objects leave the mask
    with pytest.raises(ValueError, match="2 channels"):
        Instancesd("pred")({"pred": prob[:1]})
    overlay = Overlayd("image", instances_key="instances")(
        {"image": ids, "instances": out["instances"], "pred": out["pred"]}
    )
    colours = overlay["overlay"].reshape(3, -1).T.unique(dim=0)
    assert overlay["overlay"].shape == (3, 40, 60) and len(colours) >= 4  # gray levels plus one colour per object


def test_object_table_columns_and_empty():
    table = object_table(_touching_discs(), np.ones((40, 60)))
    assert list(table["id"]) == [1, 2] and {
        "area",
        "centroid-0",
        "bbox-3",
        "equivalent_diameter",
        "mean_intensity",
    } <= set(table)
    empty = object_table(np.zeros((4, 4), int), np.zeros((4, 4)))
    assert set(empty) == set(table) and all(len(v) == 0 for v in empty.values())
    assert object_table(_touching_discs(), spacing=(2.0, 0.5))["volume"][0] == table["area"][0]


def _instances_tensor(ids: np.ndarray, name: str) -> MetaTensor:
    """``(1, X, Y)`` as MONAI's PILReader gives a ``(Y, X)`` file."""
    return MetaTensor(torch.as_tensor(ids.T.copy())[None], meta={"filename_or_obj": f"/in/{name}.png"})


def test_save_objects_writes_labels_tables_and_summary(tmp_path):
    ids = _touching_discs()
    image = MetaTensor(torch.as_tensor(ids.T * 10.0)[None], meta={"filename_or_obj": "/in/a.png"})
    save = SaveObjectsd("instances", output_dir=str(tmp_path))
    save({"instances": _instances_tensor(ids, "a"), "image_raw": image})
    written = np.asarray(Image.open(tmp_path / "a_instances.png"))
    assert written.dtype == np.uint8 and np.array_equal(written, ids)  # original size and orientation
    with open(tmp_path / "a_objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert float(rows[0]["centroid_x"]) == pytest.approx(20, abs=0.5) and float(rows[1]["centroid_x"]) > 35
    assert float(rows[1]["mean_intensity"]) == pytest.approx(20)
    # more than 255 objects: 16-bit; no objects: an all-zero image and the header only
    many = np.zeros((40, 60), np.int32)
    many.reshape(-1)[::3][:300] = np.arange(1, 301)
    save({"instances": _instances_tensor(many, "b")})
    assert np.asarray(Image.open(tmp_path / "b_instances.png")).max() == 300
    save({"instances": _instances_tensor(np.zeros((8, 8), np.int32), "c")})
    assert not np.asarray(Image.open(tmp_path / "c_instances.png")).any()
    assert (tmp_path / "c_objects.csv").read_text().splitlines()[0].startswith("id,area,centroid_y,centroid_x")
    assert len((tmp_path / "c_objects.csv").read_text().splitlines()) == 1
    with open(tmp_path / "summary.csv") as f:
        summary = {r["image"]: int(r["objects"]) for r in csv.DictReader(f)}
    assert summary == {"a.png": 2, "b.png": 300, "c.png": 0}
