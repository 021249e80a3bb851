"""Research tools outside the bundle (tools/): weight averaging, output channels, the objects sweep."""

import pytest
import torch

from scripts.networks import R2AttUNet
from tools.average_weights import average_state_dicts


def test_average_state_dicts_is_the_mean_of_the_weights(tmp_path):
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = R2AttUNet(2, 1, 2, channels=(4, 8, 16))
        files.append(str(tmp_path / f"{seed}.pt"))
        torch.save(net.state_dict(), files[-1])
    a, b = (torch.load(f, weights_only=True) for f in files)
    mean = average_state_dicts(files)
    assert mean.keys() == a.keys()
    for k, v in mean.items():
        if v.is_floating_point():
            assert torch.allclose(v, (a[k] + b[k]) / 2)
        else:
            assert torch.equal(v, a[k])  # integer buffers (num_batches_tracked) from the first
    R2AttUNet(2, 1, 2, channels=(4, 8, 16)).load_state_dict(mean)


def test_add_output_channels_keeps_the_trained_ones():
    from tools.add_output_channel import add_output_channels

    torch.manual_seed(0)
    old = R2AttUNet(2, 1, 1, channels=(4, 8, 16)).state_dict()
    new = add_output_channels(old, out_channels=2)
    net = R2AttUNet(2, 1, 2, channels=(4, 8, 16))
    net.load_state_dict(new)  # fits the wider network
    assert torch.equal(new["head.conv.weight"][:1], old["head.conv.weight"])
    assert all(torch.equal(new[k], old[k]) for k in old if not k.startswith("head."))


def test_add_output_channels_drops_a_ray_head_and_keeps_the_other_outputs():
    """``--out_channels 2 --drop true`` on star-convex weights: a network without the ray head whose mask and centre
    map are the star network's; without ``--drop`` an error says how to drop it."""
    from tools.add_output_channel import add_output_channels

    torch.manual_seed(0)
    star = R2AttUNet(2, 1, 10, channels=(4, 8, 16), rays=8).eval()
    with pytest.raises(ValueError, match="--rays 0 --drop true"):
        add_output_channels(star.state_dict(), out_channels=2)
    plain = R2AttUNet(2, 1, 2, channels=(4, 8, 16)).eval()
    plain.load_state_dict(add_output_channels(star.state_dict(), out_channels=2, drop=True))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), star(x)[:, :2])


def test_add_output_channels_with_a_ray_head_keeps_the_trained_outputs():
    from tools.add_output_channel import add_output_channels

    torch.manual_seed(0)
    trained = R2AttUNet(2, 1, 2, channels=(4, 8, 16)).eval()
    new = add_output_channels(trained.state_dict(), out_channels=10, rays=8, new_bias=-3.4)
    net = R2AttUNet(2, 1, 10, channels=(4, 8, 16), rays=8).eval()
    net.load_state_dict(new)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out[:, :2], trained(x))  # the trained channels give what they gave
    assert torch.allclose(out[:, 2:], torch.full_like(out[:, 2:], -3.4))  # the rays start at the bias everywhere
    with pytest.raises(ValueError, match="already have a ray head"):
        add_output_channels(new, out_channels=10, rays=8)
    with pytest.raises(ValueError, match="drop trained channels"):
        add_output_channels(trained.state_dict(), out_channels=9, rays=8)


def test_ray_head_on_a_contact_network_keeps_its_mask_and_centre_map():
    """``drop``: the first trained channels of a 3-channel (mask, centre, contact) network stay, the contact map goes."""
    from tools.add_output_channel import add_output_channels

    torch.manual_seed(0)
    trained = R2AttUNet(2, 1, 3, channels=(4, 8, 16)).eval()
    new = add_output_channels(trained.state_dict(), out_channels=10, rays=8, new_bias=-3.4, drop=True)
    net = R2AttUNet(2, 1, 10, channels=(4, 8, 16), rays=8).eval()
    net.load_state_dict(new)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x)[:, :2], trained(x)[:, :2])
    with pytest.raises(ValueError, match="--drop true keeps the first ones"):
        add_output_channels(trained.state_dict(), out_channels=10, rays=8)


def test_network_weights_reads_the_weight_average_of_a_training_checkpoint(tmp_path):
    from tools.average_weights import network_weights

    torch.manual_seed(0)
    model, ema = (R2AttUNet(2, 1, 2, channels=(4, 8, 16)).state_dict() for _ in range(2))
    torch.save({"model": model, "ema_model": ema, "trainer": {"epoch": 3}}, tmp_path / "checkpoint_3.pt")
    torch.save({"model": model, "trainer": {"epoch": 3}}, tmp_path / "no_ema.pt")
    torch.save(model, tmp_path / "model.pt")
    picked = network_weights(str(tmp_path / "checkpoint_3.pt"))
    assert all(torch.equal(picked[k], ema[k]) for k in ema)
    for name in ("no_ema.pt", "model.pt"):
        assert all(torch.equal(network_weights(str(tmp_path / name))[k], model[k]) for k in model)


def test_objects_sweep_scores_components_and_contact_seeds_without_warnings():
    """Two touching discs: the connected-components baseline merges them (one object for two nuclei), contact seeds
    split them; neither path warns (the baseline once ran h-maxima of infinite height: inf - inf)."""
    import warnings

    import numpy as np

    from tools.objects_sweep import score

    yy, xx = np.mgrid[:40, :60]
    true = np.zeros((40, 60), np.int32)
    true[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    true[((yy - 20) ** 2 + (xx - 38) ** 2 < 100) & (true == 0)] = 2
    mask = (true > 0).astype(np.float32)
    contact = np.zeros_like(mask)
    contact[:, 28:31] = mask[:, 28:31]  # the pixels where the discs meet
    results = [{"id": "a", "group": "fluorescence", "prob": np.stack([mask, mask, contact]), "true": true}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = score(results, components=True)
        split = score(results, seeds="contact", seed_threshold=0.5, sigma=0.0, min_size=5)
    # one object for two nuclei: it matches the larger disc only (IoU just over 0.5), TP 1, FN 1
    assert merged["all"]["iou50"] == 0.5 and merged["all"]["iou75"] == 0.0 and merged["fluorescence"]["images"] == 1
    assert split["all"]["iou50"] == 1.0 and split["all"]["dsb"] > 0.8


def test_objects_sweep_scores_star_seeds():
    """Star-convex channels (``2 + rays``): the sweep splits touching discs by their polygons."""
    import numpy as np

    from scripts.instances import STAR_SCALE, object_targets
    from tools.objects_sweep import score

    yy, xx = np.mgrid[:40, :60]
    true = np.zeros((40, 60), np.int32)
    true[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    true[((yy - 20) ** 2 + (xx - 38) ** 2 < 100) & (true == 0)] = 2
    prob = object_targets(true, rays=32)
    results = [{"id": "a", "group": "fluorescence", "prob": prob, "true": true, "distances": prob[2:] * STAR_SCALE}]
    assert score(results, components=True)["all"]["iou50"] == 0.5
    split = score(results, seeds="star", seed_threshold=0.5, nms_threshold=0.4, sigma=1.0, min_size=5)
    assert split["all"]["iou50"] == 1.0 and split["all"]["dsb"] > 0.8


def test_objects_sweep_ceiling_separates_the_mask_by_the_true_nuclei():
    """The ceiling splits a merged mask along the true nuclei (a perfect separation scores 1), keeps the mask's
    errors (a mask eroded by 2 pixels loses IoU at the high thresholds) and counts unseeded regions as false ones."""
    import numpy as np

    from tools.objects_sweep import score, separated_by_truth

    yy, xx = np.mgrid[:40, :80]
    true = np.zeros((40, 80), np.int32)
    true[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    true[((yy - 20) ** 2 + (xx - 38) ** 2 < 100) & (true == 0)] = 2
    mask = true > 0
    split = separated_by_truth(mask, true, min_size=5)
    assert set(np.unique(split)) == {0, 1, 2} and np.array_equal(split, true)
    eroded = (yy - 20) ** 2 + (xx - 20) ** 2 < 64
    eroded |= (yy - 20) ** 2 + (xx - 38) ** 2 < 64
    speck = np.zeros_like(mask)
    speck[5:10, 65:70] = True  # a false detection far from every nucleus
    results = [{"id": "a", "group": "all", "prob": np.stack([eroded | speck] * 2).astype(np.float32), "true": true}]
    worse = score(results, ceiling=True, min_size=5)["all"]
    assert worse["iou50"] == 2 / 3 and worse["iou75"] == 0.0  # both nuclei at IoU 0.6-0.7, one false object
    assert (
        score([dict(results[0], prob=np.stack([mask] * 2).astype(np.float32))], ceiling=True, min_size=5)["all"]["dsb"]
        == 1.0
    )


@pytest.mark.slow
def test_objects_sweep_runs_the_shipped_weights_on_the_sample(tmp_path):
    """The sweep as a user runs it: the shipped weights on the sample's validation images, two passes as
    ``inference.json``, every row scored; the ceiling (the mask cut by the true nuclei) is above the mask's
    connected components, which merge touching nuclei."""
    import json

    from conftest import REPO, SAMPLE, run_module

    out = tmp_path / "sweep.json"
    args = ["--datalist", str(SAMPLE / "datalist.json"), "--key", "validation", "--seeds", "[['both',1.0]]"]
    args += ["--sigmas", "[1.0]", "--min_sizes", "[20]", "--thresholds", "[0.5,0.7]", "--tta", "2", "--out", str(out)]
    proc = run_module("tools.objects_sweep", *args, cwd=REPO)
    table = json.loads(out.read_text())
    ceiling = table["the mask separated by the true nuclei (ceiling) threshold=0.5"]["all"]
    assert ceiling["images"] == 4 and len(ceiling["curve"]) == 10
    assert ceiling["dsb"] > table["connected components"]["all"]["dsb"]
    assert "seeds=both h=1.0 sigma=1.0 min_size=20 threshold=0.7" in table
    assert "(ceiling) threshold=0.7" in proc.stdout


def test_centre_polygon_ious_measures_the_rays_alone():
    """The true distances give polygons that cover each disc; halved, they cover a quarter of it."""
    import numpy as np

    from scripts.instances import STAR_SCALE, object_targets
    from tools.objects_sweep import centre_polygon_ious

    yy, xx = np.mgrid[:40, :60]
    true = np.zeros((40, 60), np.int32)
    true[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    true[((yy - 20) ** 2 + (xx - 38) ** 2 < 100) & (true == 0)] = 2
    distances = object_targets(true, rays=32)[2:] * STAR_SCALE
    exact = centre_polygon_ious([{"true": true, "distances": distances}])
    assert exact["nuclei"] == 2 and exact["mean_iou"] > 0.85 and exact["iou75"] == 1.0
    halved = centre_polygon_ious([{"true": true, "distances": distances / 2}])
    assert 0.15 < halved["mean_iou"] < 0.35 and halved["iou50"] == 0.0
