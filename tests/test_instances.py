"""Objects: training targets, instances from probabilities, the DSB2018 score and per-object measurements."""

import csv

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from scripts.evaluation import ObjectMatching, ObjectMatchingHandler
from scripts.instances import (
    STAR_SCALE,
    as_instances,
    components,
    contact_map,
    erode_in_plane,
    h_maxima_in_regions,
    instances_from_probabilities,
    join_boundaries,
    object_table,
    object_targets,
    ray_order,
    segments_from_boundaries,
    star_distances,
    star_objects,
)
from scripts.metrics import (
    DSB_THRESHOLDS,
    info_split_merge,
    matching_ratios,
    pool_pairs,
    pooled_rand_info,
    rand_info_from_pairs,
    rand_info_scores,
    region_pairs,
)
from scripts.transforms import Instancesd, LabelTargetsd, Overlayd, auto_seeds
from scripts.writers import AtomicStackWriter, SaveObjectsd


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


def test_object_matching_handler_scores_the_engines_instances():
    """The evaluator handler reads ``instances`` and ``true_instances`` from the engine output, as the configs use it."""
    from ignite.engine import Engine

    pred, true = _two_objects()
    batch = [{"instances": torch.as_tensor(pred)[None], "true_instances": torch.as_tensor(true)[None]}]
    engine = Engine(lambda e, b: batch)
    ObjectMatchingHandler("ratio", iou=0.5).attach(engine, "val_dsb_iou50")
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["val_dsb_iou50"] == pytest.approx(2 / 3)


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


@pytest.mark.parametrize("seeds", ["centre", "both"])
def test_min_size_equals_dropping_small_objects_afterwards(seeds):
    """Regions under ``min_size`` are left out of the seeding (fast on the specks of an untrained network): the
    result is the unfiltered instances with the small objects dropped afterwards, renumbered, exactly."""
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((96, 96)), 1.5)  # blobs of every size, many of a few pixels
    mask = (noise - noise.min()) / np.ptp(noise)
    centre = ndimage.gaussian_filter(rng.random((96, 96)), 2.0)
    everything = instances_from_probabilities(mask, centre, threshold=0.55, seeds=seeds, h=0.01)
    sizes = np.bincount(everything.ravel())
    assert (sizes[1:] < 20).sum() > 5 and (sizes[1:] >= 20).sum() > 1  # specks and objects both present
    kept = np.where(sizes[everything] >= 20, everything, 0)
    expected = np.unique(kept, return_inverse=True)[1].reshape(kept.shape)  # renumbered 1..N in id order
    filtered = instances_from_probabilities(mask, centre, threshold=0.55, seeds=seeds, h=0.01, min_size=20)
    assert np.array_equal(filtered, expected)


def _window_ids(ids: np.ndarray, y: int, x: int, w: int) -> set:
    box = ids[max(0, y - w) : y + w + 1, max(0, x - w) : x + w + 1]
    return set(np.unique(box)) - {0}


def test_contact_map_marks_where_objects_touch_or_nearly_touch():
    ids = _touching_discs()  # two discs of 452 pixels (window half-width 2), touching along x = 30
    contact = contact_map(ids)
    assert contact.dtype == bool and contact.any()
    assert contact[ids == 1].any() and contact[ids == 2].any()  # on both sides of the touching line
    for y, x in zip(*np.nonzero(contact), strict=True):  # every contact pixel sees both objects in its window
        assert len(_window_ids(ids, y, x, 2 if ids[y, x] else 3)) == 2
    touching = (ids == 2) & (np.roll(ids, 1, axis=1) == 1)
    assert touching.any() and contact[touching].all()
    body = (ids > 0) & ~contact
    assert as_instances(body).max() == 2  # the bodies are apart: one seed per object
    assert np.array_equal(object_targets(ids, contact=True)[2] > 0, contact)
    assert object_targets(ids, contact=True).shape == (3, 40, 60)
    # a 2-pixel background gap: contact on the background between the objects, none far from it
    gap = np.zeros((30, 40), np.int32)
    gap[5:25, 5:18], gap[5:25, 20:35] = 1, 2
    near = contact_map(gap)
    assert near[10, 18:20].all() and not near[:, :12].any() and not near[:, 26:].any()
    far = np.zeros((30, 60), np.int32)
    far[5:25, 5:18], far[5:25, 40:55] = 1, 2
    assert not contact_map(far).any() and not contact_map(gap == 1).any()
    ids3 = np.stack([ids, ids, ids], axis=-1)  # 3D: the same contacts in every section
    assert contact_map(ids3)[..., 1][ids > 0].sum() >= contact[ids > 0].sum()


def test_instances_from_contact_seeds():
    ids = _touching_discs()
    targets = object_targets(ids, contact=True)
    instances = instances_from_probabilities(targets[0], targets[1], seeds="contact", contact_prob=targets[2])
    assert np.array_equal(instances > 0, ids > 0) and instances.max() == 2
    assert matching_ratios(instances, ids)["ratio"].mean() > 0.9
    # without the contact map: connected components (the touching pair is one object)
    assert instances_from_probabilities(targets[0], targets[1], seeds="contact").max() == 1
    # seeds under min_seed_size pixels are dropped; their pixels join the neighbouring object
    assert (
        instances_from_probabilities(targets[0], contact_prob=targets[2], seeds="contact", min_seed_size=10**4).max()
        == 1
    )
    out = Instancesd("pred", seeds="contact")({"pred": torch.as_tensor(targets)})
    assert out["pred"].shape == (1, 40, 60) and out["instances"].max().item() == 2
    assert Instancesd("pred")({"pred": torch.as_tensor(targets)})["instances"].max().item() == 2  # centre seeds
    with pytest.raises(ValueError, match="contact map"):
        Instancesd("pred", seeds="contact")({"pred": torch.as_tensor(targets[:2])})
    # seeds "auto" (the configs' default) follows the channels: contact for 3, both (distance + centre) for 2
    auto = Instancesd("pred", seeds="auto")
    for channels, seeds in ((3, "contact"), (2, "both")):
        got = auto({"pred": torch.as_tensor(targets[:channels])})["instances"]
        want = Instancesd("pred", seeds=seeds)({"pred": torch.as_tensor(targets[:channels])})["instances"]
        assert torch.equal(got, want) and (auto_seeds(channels), auto_seeds(34)) == (seeds, "star")


def _star_pair() -> np.ndarray:
    """Two touching ellipses of different sizes and an off-axis square: no symmetry of the square maps it onto
    itself."""
    yy, xx = np.mgrid[:48, :64]
    ids = np.zeros((48, 64), np.int32)
    ids[((yy - 20) / 12.0) ** 2 + ((xx - 18) / 9.0) ** 2 <= 1] = 1
    ids[(((yy - 24) / 8.0) ** 2 + ((xx - 34) / 10.0) ** 2 <= 1) & (ids == 0)] = 2
    ids[34:44, 48:57] = 3
    return ids


def test_star_distances_by_hand_and_under_every_symmetry():
    square = np.zeros((9, 9), np.int32)
    square[2:7, 2:7] = 1  # 5x5, centre (4, 4)
    d = star_distances(square, 8)
    assert d.shape == (8, 9, 9) and d.dtype == np.float32 and not d[:, 0, 0].any()
    # ray k at angle 2 pi k / 8, steps (dy, dx) = (sin, cos): ray 0 right, 2 down, 4 left, 6 up; the first pixel
    # outside is 3 steps away, the edge (between pixels) 2.5
    assert d[[0, 2, 4, 6], 4, 4] == pytest.approx([2.5, 2.5, 2.5, 2.5])
    assert d[0, 4, 5] == pytest.approx(1.5) and d[4, 4, 5] == pytest.approx(3.5)
    ids = _star_pair()
    dist = star_distances(ids, 32)
    for transposed in (False, True):
        for flipped in ((), (0,), (1,), (0, 1)):
            moved = ids.T if transposed else ids
            moved = np.flip(moved, flipped) if flipped else moved
            back = star_distances(np.ascontiguousarray(moved), 32)
            back = np.flip(back, tuple(a + 1 for a in flipped)) if flipped else back
            back = back.transpose(0, 2, 1) if transposed else back
            assert np.allclose(back[ray_order(32, transposed, flipped)], dist, atol=1e-4), (transposed, flipped)
    assert not np.allclose(back, dist, atol=1e-4)  # the rays do move
    with pytest.raises(ValueError, match="multiple of 4"):
        ray_order(6, transposed=True)
    with pytest.raises(ValueError, match="2D"):
        star_distances(np.stack([ids, ids], -1), 32)


def test_star_targets_and_objects_separate_touching_objects():
    ids = _star_pair()
    targets = object_targets(ids, rays=32)
    assert targets.shape == (34, 48, 64) and targets[2:].max() <= 1
    assert np.allclose(targets[2:] * STAR_SCALE, star_distances(ids, 32), atol=1e-4)
    assert np.array_equal(targets[:2], object_targets(ids))
    with pytest.raises(ValueError, match="not both"):
        object_targets(ids, contact=True, rays=32)
    distances = targets[2:] * STAR_SCALE
    polygons = star_objects(targets[1], distances, prob_threshold=0.5, nms_threshold=0.4)
    assert polygons.max() == 3 and matching_ratios(polygons, ids)["ratio"][:5].min() == 1  # all at IoU 0.5-0.7
    instances = instances_from_probabilities(targets[0], targets[1], seeds="star", distances=distances)
    assert np.array_equal(instances > 0, ids > 0) and instances.max() == 3  # the mask's pixels, the polygons' split
    assert matching_ratios(instances, ids)["ratio"].mean() > 0.9
    # the distance split of the mask merges nothing here either, but connected components merge the pair
    assert instances_from_probabilities(targets[0], targets[1], seeds="star").max() == 2  # no distances: components
    assert not star_objects(np.zeros((48, 64)), distances).any()
    out = Instancesd("pred", seeds="star")({"pred": torch.as_tensor(targets)})
    assert out["pred"].shape == (1, 48, 64) and out["instances"].max().item() == 3
    with pytest.raises(ValueError, match="2 \\+ rays channels"):
        Instancesd("pred", seeds="star")({"pred": torch.as_tensor(targets[:3])})
    label = torch.as_tensor(ids[None], dtype=torch.float32)
    assert LabelTargetsd("label", rays=32)({"label": label})["label"].shape == (34, 48, 64)


def test_h_maxima_in_regions_matches_scikit_image_per_region():
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(0)
    landscape = ndimage.gaussian_filter(rng.random((64, 80)), 2).astype(np.float32) * 50
    regions = as_instances(ndimage.gaussian_filter(rng.random((64, 80)), 3) > 0.5)
    assert regions.max() > 2
    maxima = h_maxima_in_regions(landscape, 0.5, regions)
    assert not maxima[regions == 0].any()
    for i in range(1, regions.max() + 1):  # each region alone, the rest of the image far below it
        alone = np.where(regions == i, landscape, landscape.min() - 10)
        assert np.array_equal(maxima & (regions == i), h_maxima(alone, 0.5).astype(bool) & (regions == i))
    # a lower peak next to a higher one across the background: kept here, suppressed by a whole-image h-maxima
    two = np.zeros((5, 11), np.float32)
    two[2, 1:4], two[2, 7:10] = (1.6, 3, 1.6), (1.6, 2, 1.6)
    two[2, 4:7] = 1.5  # background ridge joining the peaks
    split = as_instances(
        np.pad(np.ones((1, 3), bool), ((2, 2), (1, 7))) | np.pad(np.ones((1, 3), bool), ((2, 2), (7, 1)))
    )
    assert h_maxima_in_regions(two, 0.8, split)[2, 8] and not h_maxima(two, 0.8)[2, 8]


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
    with pytest.raises(ValueError, match="needs 2 or 3 channels"):
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


def _two_cells() -> np.ndarray:
    """A 3x7 membrane label: column 3 is membrane, two cells of 3x3 pixels either side."""
    membrane = np.zeros((3, 7), bool)
    membrane[:, 3] = True
    return membrane


def test_rand_info_scores_hand_computed():
    membrane = _two_cells()
    # one segment over both cells (a merge): p = [1/2, 1/2], s = [1], t = [1/2, 1/2]
    v_rand, v_info = rand_info_scores(np.ones((3, 7), int), membrane, segments=True)
    assert v_rand == pytest.approx(0.5 / 0.75) and v_info == pytest.approx(0.0)
    # the left cell split 3 + 6 pixels, the right one exact, the membrane column left as boundary (0)
    segments = np.zeros((3, 7), int)
    segments[:, 0], segments[:, 1:3], segments[:, 4:] = 1, 2, 3
    v_rand, v_info = rand_info_scores(segments, membrane, segments=True)
    s = np.array([3, 6, 9]) / 18
    h_s, h_t = -(s * np.log(s)).sum(), np.log(2)
    assert v_rand == pytest.approx((s**2).sum() / (0.5 * (s**2).sum() + 0.5 * 0.5))
    assert v_info == pytest.approx(h_t / (0.5 * h_s + 0.5 * h_t))
    # the same as a boundary map: the split drawn as a boundary column is joined to its nearest region
    boundary = membrane.copy()
    boundary[:, 1] = True
    assert rand_info_scores(boundary, membrane)[0] < 1
    assert rand_info_scores(membrane, membrane) == (1.0, 1.0)
    # pooled over images: each image's regions stay distinct
    pairs = [region_pairs(segments, membrane, segments=True), region_pairs(membrane, membrane)]
    pooled = pooled_rand_info(pairs)
    assert rand_info_scores(segments, membrane, True)[0] < pooled[0] < 1


def test_info_split_merge_hand_computed():
    membrane = _two_cells()
    # a merge (one segment over both cells): I = 0, H(S) = 0, so the split term is 1 and the merge term 0
    assert info_split_merge(region_pairs(np.ones((3, 7), int), membrane, segments=True)) == (1.0, 0.0)
    # a split of the left cell (3 + 6 pixels), the right one exact: no merge, H(S) > H(T) = log 2
    segments = np.zeros((3, 7), int)
    segments[:, 0], segments[:, 1:3], segments[:, 4:] = 1, 2, 3
    pairs = region_pairs(segments, membrane, segments=True)
    split, merge = info_split_merge(pairs)
    s = np.array([3, 6, 9]) / 18
    assert merge == pytest.approx(1.0) and split == pytest.approx(np.log(2) / -(s * np.log(s)).sum())
    # V_info is their harmonic mean, pooled or not
    v_info = rand_info_from_pairs(pairs)[1]
    assert v_info == pytest.approx(2 / (1 / split + 1 / merge))
    exact = region_pairs(membrane, membrane)
    pooled = pool_pairs([pairs, exact])
    assert pooled.shape[1] == pairs.shape[1] + exact.shape[1]
    assert rand_info_from_pairs(pooled) == pooled_rand_info([pairs, exact])
    assert info_split_merge(pooled)[1] == pytest.approx(1.0) and split < info_split_merge(pooled)[0] < 1


def test_rand_score_equals_scikit_image_adapted_rand_on_random_segments():
    rng = np.random.default_rng(0)
    membrane = np.zeros((64, 64), bool)
    membrane[::9, :] = membrane[:, ::11] = True
    segments = np.kron(rng.integers(1, 4, (8, 8)), np.ones((8, 8), int))  # random blocks of 3 ids
    segments[::5, :] = 0  # and boundary rows, joined to their nearest segment
    truth = ndimage.label(~membrane)[0]
    v_rand = rand_info_scores(segments, membrane, segments=True)[0]
    # scikit-image leaves out self-pairs (n from each sum of squares): equal up to that
    assert v_rand == pytest.approx(
        1 - adapted_rand_error(truth, join_boundaries(segments), ignore_labels=(0,))[0], abs=2e-3
    )
    assert 0.05 < v_rand < 0.9


def _membrane_grid(noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 grid of cells between 2-pixel membranes, and a noisy membrane probability of it."""
    membrane = np.zeros((96, 96), bool)
    for k in range(0, 96, 24):
        membrane[k : k + 2, :] = membrane[:, k : k + 2] = True
    rng = np.random.default_rng(1)
    prob = np.clip(membrane * 0.9 + rng.normal(0, noise, membrane.shape), 0, 1).astype(np.float32)
    return membrane, prob


def test_segments_from_boundaries_finds_every_cell_and_keeps_thin_lines():
    membrane, prob = _membrane_grid()
    segments = segments_from_boundaries(prob, sigma=1.0, h=0.05, merge_threshold=0.7)
    assert rand_info_scores(segments, membrane, segments=True) == pytest.approx((1.0, 1.0), abs=1e-9)
    assert len(np.unique(segments[segments > 0])) == 16  # the grid wraps: 4x4 cells
    assert 0 < (segments == 0).mean() < membrane.mean()  # one-pixel lines, thinner than the membranes
    # without merging, the noise over-segments; a stack is segmented section by section with distinct ids
    over = segments_from_boundaries(prob, sigma=0.0, h=0.01, merge_threshold=0.0)
    assert over.max() > 16
    stack = segments_from_boundaries(np.stack([prob, prob], -1))
    assert stack.shape == (96, 96, 2) and stack.max() == 32 and not np.isin(stack[..., 0], stack[..., 1]).all()


def test_small_segments_join_their_neighbours():
    membrane, prob = _membrane_grid()
    prob[30:34, 30:34] = 0.95  # a dark blob inside one cell ...
    prob[31:33, 31:33] = 0.0  # ... around a small hole: its own segment of about 4 pixels
    split = segments_from_boundaries(prob, sigma=0.0, h=0.05, merge_threshold=0.0)
    joined = segments_from_boundaries(prob, sigma=0.0, h=0.05, merge_threshold=0.0, min_size=50)
    assert split[32, 32] not in (0, split[27, 27])
    assert joined[32, 32] == joined[27, 27] > 0  # the hole belongs to the cell around it
    sizes, split_sizes = np.bincount(joined.ravel())[1:], np.bincount(split.ravel())[1:]
    assert split_sizes.min() < 10 < sizes.min() and len(sizes) < len(split_sizes)  # sizes without the 1-pixel lines
    assert (joined > 0).sum() >= (split > 0).sum() - 40  # no pixels lost to the background


def test_components_in_3d_with_a_minimum_size():
    mask = np.zeros((20, 20, 5), bool)
    mask[2:8, 2:8, 1:4] = True  # 108 voxels through 3 sections: one object
    mask[12:14, 12:14, 2] = True  # 4 voxels
    assert components(mask).max() == 2
    kept = components(mask, min_size=10)
    assert kept.max() == 1 and kept[2:8, 2:8, 1:4].all() and not kept[12:14, 12:14, 2].any()


def test_erosion_in_plane_thins_objects_not_sections_nor_the_edge():
    mask = np.zeros((20, 20, 3), bool)
    mask[2:8, 2:8, :] = True  # 6 x 6 in each of 3 sections
    mask[15:20, 15:20, 1] = True  # 5 x 5 touching the array's edge
    thin = erode_in_plane(mask, 1)
    assert thin[3:7, 3:7, :].all() and thin[2:8, 2:8].sum() == 16 * 3  # 4 x 4 left in every section, none lost in z
    assert thin[16:20, 16:20, 1].all() and thin[15:20, 15:20, 1].sum() == 16  # the edge side does not erode
    assert np.array_equal(erode_in_plane(mask, 0), mask)
    objects = components(mask, min_size=20, erode=1)  # the 16-voxel object is under 20 once eroded
    assert objects.max() == 1 and objects[3:7, 3:7].all()
    prob = torch.as_tensor(mask[None].astype(np.float32))
    d = Instancesd("pred", method="components", erode=1)({"pred": prob})
    assert torch.equal(d["pred"][0] > 0, torch.as_tensor(thin))  # the mask is the union of the eroded objects


def test_instances_transform_methods():
    membrane, prob = _membrane_grid()
    d = Instancesd("pred", method="neurons", h=0.05, sigma=1.0)({"pred": torch.as_tensor(prob)[None]})
    assert d["instances"].shape == (1, 96, 96) and int(d["instances"].max()) == 16
    assert torch.equal(d["pred"], torch.as_tensor(prob)[None])  # the membrane probability is kept
    mask = np.zeros((1, 20, 20, 5), np.float32)
    mask[0, 2:8, 2:8, 1:4], mask[0, 12:14, 12:14, 2] = 0.9, 0.8
    d = Instancesd("pred", method="components", min_size=10)({"pred": torch.as_tensor(mask)})
    assert int(d["instances"].max()) == 1 and float(d["pred"][0, 12, 12, 2]) == 0.0  # the small object left the mask
    with pytest.raises(ValueError, match="1 channel"):
        Instancesd("pred", method="components")({"pred": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match="method"):
        Instancesd("pred", method="cells")
    # EM presets train on the mask alone, whatever ``objects`` says
    label = torch.as_tensor(mask > 0.5).float()
    assert LabelTargetsd("label", objects=True, method="components")({"label": label})["label"].shape == label.shape


def test_save_objects_of_a_nifti_volume_reports_volumes(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImaged

    ids = np.zeros((20, 20, 5), np.uint8)
    ids[2:8, 2:8, 1:4] = 1
    img = nib.Nifti1Image(ids, np.diag([0.004, 0.004, 0.05, 1.0]))
    img.header.set_xyzt_units("micron")
    nib.save(img, tmp_path / "v.nii.gz")
    d = LoadImaged("instances", image_only=True)({"instances": str(tmp_path / "v.nii.gz")})
    d["instances"] = d["instances"][None]
    SaveObjectsd("instances", output_dir=str(tmp_path / "out"), image_key=None, writer=AtomicStackWriter)(d)
    rows = list(csv.DictReader(open(tmp_path / "out" / "v_objects.csv")))
    assert len(rows) == 1 and int(rows[0]["area"]) == 108
    assert float(rows[0]["volume_um3"]) == pytest.approx(108 * 0.004 * 0.004 * 0.05, rel=1e-3)
    assert (rows[0]["bbox_z_min"], rows[0]["bbox_z_max"]) == ("1", "4")  # the file's axes: z, y, x
    written = nib.load(tmp_path / "out" / "v_instances.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), ids) and np.allclose(written.affine, img.affine)
