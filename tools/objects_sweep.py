"""Choose the object post-processing (``seeds``, ``seed_h``, ``seed_sigma``, ``min_object_size``) by measurement,
and score objects per image type: the network runs once per image through ``configs/inference.json`` (weights
from ``--ckpt_dir``), then every setting is scored on the same probabilities.

``python -m tools.objects_sweep --datalist bundle/data/dsb2018/datalist.json --key training --limit 60``

Tune on training images (the network trained on them, but the post-processing did not), report on the validation
split.

``--objects neurons --pred_dir O`` chooses the neuron post-processing of the EM presets instead (``seed_sigma``,
``seed_h``, ``merge_threshold``, ``min_object_size``) on the membrane probabilities ``<stem>_prob.png`` that
``inference.json`` + ``em2d.json`` wrote with ``--save_probabilities true`` into ``O``, scored by the ISBI 2012
V_rand and V_info pooled over the images.

With weights of three output channels (mask, centre map, contact map) the contact seeds (``seeds=contact``,
``seed_threshold``) are compared too; with star-convex distance channels (``2 + rays`` channels, ``--rays``) the
polygon seeds (``seeds=star``, ``seed_threshold`` the centre-map level, each with every ``--nms_thresholds``).

The network runs once per image unless ``--tta 2`` (the two passes of ``inference.json``; ``4``, ``true``: more).
``--thresholds`` compares levels of the object probability for the mask (``threshold``, 0.5 in ``inference.json``).

Prints, per setting, the DSB2018 score and the TP/(TP+FP+FN) ratio at IoU 0.5 and 0.75 (mean over images), and for
the connected components of the mask (the pixel model's answer) beside them, and the ceiling of the mask: the same
mask separated by the true nuclei, what no seeds can beat (a diagnostic, not a decoding: it reads the labels);
``--out`` writes them as JSON.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import fire
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset
from PIL import Image
from scipy import ndimage

from scripts.data import load_datalist
from scripts.files import reverse_axes, write_json_atomic
from scripts.inferers import with_flips
from scripts.instances import (
    STAR_SCALE,
    as_instances,
    grow_seeds,
    instances_from_probabilities,
    ray_order,
    segments_from_boundaries,
)
from scripts.metrics import matching_ratios, pool_pairs, rand_info_terms, region_pairs
from scripts.networks import NETWORK_KEYS, ray_count, state_dict_config
from tools import BUNDLE

MODELS_DIR = str(BUNDLE / "models")


def probabilities(
    datalist: str, key: str, ckpt_dir: str, limit: int | None, ensemble: bool, tta: int | bool | str = 0
) -> list[dict]:
    """``[{"id", "group", "prob" (C, Y, X), "true" (Y, X) instance ids, "distances"}]`` for the first ``limit`` items
    of ``key`` (``C`` 2: mask, centre map; 3: and the contact map; ``2 + rays``: and star-convex distances, also as
    ``"distances"`` ``(rays, Y, X)`` in pixels, else ``None``), from a network
    built as the weights in ``ckpt_dir`` need (output channels and channels per level, e.g. a wider network than
    ``inference.json``'s), with the test-time flips ``tta`` (:func:`scripts.inferers.with_flips`; ``0`` one pass,
    ``2`` ``inference.json``'s default)."""
    state = torch.load(Path(ckpt_dir) / "model.pt", map_location="cpu", weights_only=True)
    config = state_dict_config(state)
    if config is None:
        raise ValueError(f"{Path(ckpt_dir) / 'model.pt'} does not hold the weights of an R2AttUNet")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "ckpt_dir": str(Path(ckpt_dir).resolve()), "ensemble": ensemble})
    parser["network_def"].update({k: v for k, v in config.items() if k in NETWORK_KEYS})
    network = parser.get_parsed_content("network")
    members = parser.get_parsed_content("ensemble_networks") if ensemble else None
    if not ensemble:
        network.load_state_dict(state)
        network.eval()
    inferer = with_flips(parser.get_parsed_content("inferer"), tta, ray_count(members[0] if members else network))
    preprocessing = parser.get_parsed_content("preprocessing")
    items = load_datalist(datalist, key)[:limit]
    results = []
    for it, d in zip(items, Dataset([{"image": it["image"]} for it in items], transform=preprocessing), strict=True):
        with torch.no_grad():
            image = d["image"][None]
            nets = members or [network]
            prob = torch.stack([torch.sigmoid(inferer(image, n)[0].float()) for n in nets]).mean(0)
        true = as_instances(np.asarray(Image.open(it["label"])))
        prob = reverse_axes(prob.numpy(), leading=1)  # PILReader's (X, Y) back to the file's (Y, X)
        if len(prob) > 3:  # star-convex distances: the transpose moves the rays too
            prob[2:] = prob[2:][ray_order(len(prob) - 2, transposed=True)]
        # star-convex distances in pixels, once for every setting that score() compares
        distances = prob[2:] * STAR_SCALE if len(prob) > 3 else None
        result = {"id": it.get("id", it["image"]), "group": it.get("group", "all"), "prob": prob, "true": true}
        results.append({**result, "distances": distances})
    return results


def separated_by_truth(mask: np.ndarray, true: np.ndarray, min_size: int = 20) -> np.ndarray:
    """The best any separation of ``mask`` (bool ``(Y, X)``) can do: each true nucleus (``true``, instance ids) seeds
    its pixels in the mask, grown over the mask by a flat watershed (every mask pixel joins the nearest seed it
    connects to), the mask's regions without a true nucleus are objects of their own, and objects under ``min_size``
    pixels are dropped as the decodings drop them. Instance labels (int32, ``0`` background)."""
    return grow_seeds(np.zeros(mask.shape, np.float32), np.where(mask, true, 0), mask, min_size)


def score(results: list[dict], components: bool = False, ceiling: bool = False, **params) -> dict:
    """Mean over images of the DSB2018 score and the ratios at IoU 0.5 and 0.75 (and at every threshold, ``"curve"``),
    overall and per image type.
    ``components``: the mask's connected components (no seeds), the baseline; ``ceiling``: the mask separated by the
    true nuclei (:func:`separated_by_truth`, ``min_size`` of ``params``), what the mask allows at best; else instances
    with ``params``."""
    per_group: dict[str, list[np.ndarray]] = {}
    for r in results:
        centre = None if components else r["prob"][1]
        contact = r["prob"][2] if len(r["prob"]) == 3 and not components else None
        distances = None if components else r.get("distances")
        if ceiling:
            pred = separated_by_truth(r["prob"][0] >= params.get("threshold", 0.5), r["true"], params["min_size"])
        else:
            pred = instances_from_probabilities(
                r["prob"][0], centre, contact_prob=contact, distances=distances, **params
            )
        ratios = matching_ratios(pred, r["true"])["ratio"]
        per_group.setdefault("all", []).append(ratios)
        per_group.setdefault(r["group"], []).append(ratios)
    curves = {g: np.mean(v, axis=0) for g, v in per_group.items()}  # TP/(TP+FP+FN) at IoU 0.50, 0.55, .., 0.95
    return {
        g: {
            "images": len(per_group[g]),
            "dsb": float(c.mean()),
            "iou50": float(c[0]),
            "iou75": float(c[5]),
            "curve": [float(x) for x in c],
        }
        for g, c in curves.items()
    }


def centre_polygon_ious(results: list[dict]) -> dict:
    """How good the predicted rays are on their own: for every true nucleus, the IoU with it of the star-convex polygon
    that the ``"distances"`` ``(rays, Y, X)`` give at its centre (the pixel furthest from its edge), free of the
    candidates and the suppression that decide which polygons a decoding keeps. Returns the number of nuclei, the
    mean IoU and the fractions at IoU 0.5 and 0.75 (the true distances of 32 rays give a mean of 0.97 on 30 DSB2018
    training images)."""
    from skimage.draw import polygon
    from stardist import dist_to_coord  # the [star] extra, there wherever star-convex weights are

    ious = []
    for r in results:
        true, distances = r["true"], r["distances"]
        areas = np.bincount(true.ravel())
        for i, box in enumerate(ndimage.find_objects(true), start=1):
            if box is None:
                continue
            edt = ndimage.distance_transform_edt(np.pad(true[box] == i, 1))[1:-1, 1:-1]
            y, x = (int(c) + s.start for c, s in zip(np.unravel_index(np.argmax(edt), edt.shape), box, strict=True))
            coord = dist_to_coord(distances[:, y, x][None], np.array([[y, x]]))[0]
            rr, cc = polygon(coord[0], coord[1], true.shape)  # the polygon's pixels, no image-sized arrays
            inter = np.count_nonzero(true[rr, cc] == i)
            ious.append(inter / (rr.size + areas[i] - inter))
    ious = np.asarray(ious, dtype=np.float64)
    return {
        "nuclei": int(ious.size),
        "mean_iou": float(ious.mean()) if ious.size else float("nan"),
        "iou50": float((ious >= 0.5).mean()) if ious.size else float("nan"),
        "iou75": float((ious >= 0.75).mean()) if ious.size else float("nan"),
    }


# settings compared: (seeds, h or, for contact seeds, the seed threshold); each with every sigma and min_size below
SEEDS = (
    ("star", 0.4),
    ("star", 0.5),
    ("star", 0.6),
    ("contact", 0.3),
    ("contact", 0.5),
    ("contact", 0.7),
    ("centre", 0.1),
    ("centre", 0.2),
    ("distance", 1.0),
    ("distance", 2.0),
    ("both", 1.0),
    ("both", 2.0),
    ("both", 3.0),
)


def neurons(
    datalist: str,
    pred_dir: str,
    key: str = "training",
    limit: int | None = None,
    sigmas=(1.0,),
    hs=(0.05,),
    merge_thresholds=(0.6, 0.7, 0.75),
    min_sizes=(0, 50, 100, 200, 400, 800),
) -> dict:
    """Pooled V_rand and V_info (and V_info's split and merge terms) of the neuron segments, per setting, from the saved
    membrane probabilities of the first ``limit`` items of ``key`` (the label: membranes 0, cells 255, as ``prepare
    isbi2012`` writes them)."""
    items = load_datalist(datalist, key)[:limit]
    probs, labels = [], []
    for it in items:
        path = Path(pred_dir) / f"{Path(it['image']).stem}_prob.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run inference.json + em2d.json with --save_probabilities true first.")
        probs.append(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
        labels.append(np.asarray(Image.open(it["label"]).convert("L")) > 0)
    table = {}
    for sigma, h, merge, m in itertools.product(sigmas, hs, merge_thresholds, min_sizes):
        pairs = [
            region_pairs(segments_from_boundaries(p, sigma, h, merge_threshold=merge, min_size=m), t, segments=True)
            for p, t in zip(probs, labels, strict=True)
        ]
        scores = rand_info_terms(pool_pairs(pairs))
        name = f"seed_sigma={sigma} seed_h={h} merge_threshold={merge} min_object_size={m}"
        table[name] = {"images": len(items)} | scores
        print(
            f"{name:<72} V_rand {scores['V_rand']:.4f}  V_info {scores['V_info']:.4f} "
            f"(split {scores['V_info_split']:.4f}, merge {scores['V_info_merge']:.4f})",
            flush=True,
        )
    return table


def main(
    datalist: str,
    key: str = "training",
    ckpt_dir: str = MODELS_DIR,
    limit: int | None = None,
    ensemble: bool = False,
    seeds=SEEDS,
    sigmas=(1.0, 2.0),
    min_sizes=(0, 10, 20, 40),
    out: str | None = None,
    objects: str = "nuclei",
    pred_dir: str | None = None,
    merge_thresholds=(0.6, 0.7, 0.75),
    hs=(0.05,),
    nms_thresholds=(0.3, 0.4, 0.5),
    thresholds=(0.5,),
    tta: int | bool | str = 0,
) -> None:
    if objects == "neurons":
        if pred_dir is None:
            raise ValueError(
                "--objects neurons needs --pred_dir: the folder of <stem>_prob.png (--save_probabilities)."
            )
        table = neurons(datalist, pred_dir, key, limit, sigmas, hs, merge_thresholds, min_sizes)
        if out:
            write_json_atomic(table, out, indent=2)
        return
    results = probabilities(datalist, key, ckpt_dir, limit, ensemble, tta)
    table = {"connected components": score(results, components=True)}
    for t in thresholds:
        name = f"the mask separated by the true nuclei (ceiling) threshold={t}"
        table[name] = score(results, ceiling=True, min_size=min(min_sizes), threshold=t)
    channels = {len(r["prob"]) for r in results}
    has = {"contact": channels == {3}, "star": min(channels) > 3}
    for (source, h), sigma, m, t in itertools.product(seeds, sigmas, min_sizes, thresholds):
        if not has.get(source, True):
            continue
        threshold = "seed_threshold" if source in ("contact", "star") else "h"
        for nms in nms_thresholds if source == "star" else (None,):
            value = {threshold: h, "threshold": t} | ({"nms_threshold": nms} if nms is not None else {})
            name = f"seeds={source} {threshold}={h}{'' if nms is None else f' nms_threshold={nms}'} sigma={sigma}"
            table[f"{name} min_size={m} threshold={t}"] = score(results, seeds=source, sigma=sigma, min_size=m, **value)
    for name, s in table.items():
        groups = "; ".join(f"{g} ({v['images']}) {v['dsb']:.3f}" for g, v in s.items() if g != "all")
        a = s["all"]
        print(f"{name:<48} DSB {a['dsb']:.4f}  IoU0.5 {a['iou50']:.4f}  IoU0.75 {a['iou75']:.4f}  | {groups}")
    if has["star"]:
        rays = centre_polygon_ious(results)
        print(
            f"polygons at the {rays['nuclei']} true centres: mean IoU {rays['mean_iou']:.3f}, at IoU 0.5 "
            f"{rays['iou50']:.3f}, at 0.75 {rays['iou75']:.3f}"
        )
        table = {"polygons at the true centres": rays} | table
    if out:
        write_json_atomic(table, out, indent=2)


if __name__ == "__main__":
    fire.Fire(main)
