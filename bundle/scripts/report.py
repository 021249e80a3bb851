"""Performance report: scores of inference.json's masks against labels per image type, a figure of examples
(image, ground truth, prediction, like the paper's Figure 3) and the training curves from TensorBoard.

``python -m scripts.report --datalist D/datalist.json --key validation --pred_dir O --out docs/figures [--tb_dir runs]``

For volumes (EM stacks), ``python -m scripts.report volumes --label L.nii.gz --image I.nii.gz
--preds "{'3D': 'O3/x_seg.nii.gz', '2D slice by slice': 'O2/x_seg.nii.gz'}" --out docs/figures/em3d.png`` scores each
segmented volume against the label volume and draws sections with their errors.

``python -m scripts.report tolerance --datalist D/datalist.json --key validation --pred_dir O`` measures how much of the
disagreement with the labels lies within a pixel or two of the other mask (thin structures such as EM membranes, whose
labelled width is a convention) and what a width off by that much costs a perfect segmentation.

``python -m scripts.report logs --logs "{'2D': 'train2d.log', '3D': 'train3d.log'}" --out curves.png`` draws the
validation Dice of trainings against their training steps from what ``monai.bundle run`` printed (its log file or
redirected output), for runs whose TensorBoard files are not at hand.

``pred_dir`` holds ``<stem>_seg.png`` written by ``configs/inference.json`` for the images of the ``key`` split, at
their original size. Scores use MONAI's ``ConfusionMatrixMetric`` (pooled over pixels) and ``DiceMetric`` (per image).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, SurfaceDiceMetric
from monai.transforms.utils import distance_transform_edt
from PIL import Image

from scripts import quiet
from scripts.data import load_datalist
from scripts.files import reverse_axes
from scripts.instances import as_instances, outline_objects
from scripts.metrics import (
    DSB_THRESHOLDS,
    boundary_regions,
    dice,
    dsb_score,
    iou,
    matching_ratios,
    object_counts,
    object_errors,
    object_f1,
    pooled_rand_info,
    region_pairs,
)

__all__ = [
    "score_predictions",
    "error_counts",
    "plot_examples",
    "plot_training_curves",
    "main",
    "score_volume",
    "volumes",
    "parse_log",
    "logs",
    "score_tolerance",
    "tolerance",
]

_POOLED = ("f1 score", "precision", "sensitivity", "accuracy", "threat score")
_NAMES = {
    "f1 score": "pooled Dice",
    "precision": "precision",
    "sensitivity": "recall",
    "accuracy": "accuracy",
    "threat score": "pooled IoU",
}


def _mask(path: str | os.PathLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("L")) > 0)[None, None].float()


def _prediction_and_label(item: dict, pred_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``<pred_dir>/<stem>_seg.png`` of ``item["image"]`` and ``item["label"]`` as binary ``(1, 1, H, W)`` tensors;
    an error naming the mask when the sizes differ."""
    stem = Path(item["image"]).stem
    pred, label = _mask(pred_dir / f"{stem}_seg.png"), _mask(item["label"])
    if pred.shape != label.shape:
        raise ValueError(
            f"{pred_dir / (stem + '_seg.png')}: size {pred.shape[2:]} differs from label {label.shape[2:]}"
        )
    return pred, label


def _groups(items: list[dict]) -> dict[str, list[dict]]:
    """``all`` items, then the items of each ``group`` of the datalist."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        groups["all"].append(it)
        if "group" in it:
            groups[it["group"]].append(it)
    return groups


def error_counts(items: list[dict], pred_dir: str | os.PathLike, iou: float = 0.5) -> dict[str, dict[str, int]]:
    """:func:`scripts.metrics.object_errors` of ``<stem>_instances.png`` against each item's instances, summed over
    all items and per ``group``: why nuclei do not match at IoU ``iou`` (merged, split, missed, loose; false
    objects)."""
    per_item = {}
    for it in items:
        pred = np.asarray(Image.open(Path(pred_dir) / f"{Path(it['image']).stem}_instances.png"))
        per_item[it["image"]] = object_errors(pred, np.asarray(Image.open(it["label"])), iou)
    return {
        name: {k: sum(per_item[it["image"]][k] for it in members) for k in per_item[members[0]["image"]]}
        for name, members in _groups(items).items()
    }


def score_predictions(items: list[dict], pred_dir: str | os.PathLike, objects: str = "nuclei") -> dict:
    """Scores of ``<pred_dir>/<stem>_seg.png`` against each item's label, for all items and per ``group``; object
    scores of ``<stem>_instances.png`` by ``objects`` (:data:`OBJECT_SCORES`)."""
    if objects not in OBJECT_SCORES:
        raise ValueError(f"objects must be one of {tuple(OBJECT_SCORES)}, got {objects!r}.")
    pred_dir = Path(pred_dir)
    results = {}
    for name, members in _groups(items).items():
        pooled = ConfusionMatrixMetric(metric_name=list(_POOLED), compute_sample=False, reduction="sum")
        per_image = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
        for it in members:
            pred, label = _prediction_and_label(it, pred_dir)
            pooled(pred, label)
            per_image(pred, label)
        values = [float(v) for v in pooled.aggregate()]
        results[name] = {"images": len(members), "mean Dice": float(per_image.aggregate())}
        results[name].update({_NAMES[m]: v for m, v in zip(_POOLED, values, strict=True)})
        results[name].update(OBJECT_SCORES[objects](members, pred_dir))
    return results


def _object_scores(items: list[dict], pred_dir: Path) -> dict[str, float]:
    """Means over images of the DSB2018 score and TP/(TP+FP+FN) at IoU 0.5 and 0.75 of ``<stem>_instances.png``
    against the label's instances, and of the connected components of ``<stem>_seg.png`` (the pixel answer) beside
    them; empty when the predictions hold no instances."""
    ours, components = [], []
    for it in items:
        stem = Path(it["image"]).stem
        if not (pred_dir / f"{stem}_instances.png").is_file():
            return {}
        label = np.asarray(Image.open(it["label"]))
        ours.append(matching_ratios(np.asarray(Image.open(pred_dir / f"{stem}_instances.png")), label)["ratio"])
        seg = np.asarray(Image.open(pred_dir / f"{stem}_seg.png").convert("L")) > 0
        components.append(matching_ratios(seg.astype(np.uint8), label)["ratio"])
    scores = {}
    for prefix, ratios in (("", ours), ("connected components: ", components)):
        ratios = np.asarray(ratios)
        scores[f"{prefix}DSB score"] = float(ratios.mean())
        scores[f"{prefix}TP/(TP+FP+FN) at IoU 0.5"] = float(ratios[:, DSB_THRESHOLDS.index(0.5)].mean())
        scores[f"{prefix}TP/(TP+FP+FN) at IoU 0.75"] = float(ratios[:, DSB_THRESHOLDS.index(0.75)].mean())
    return scores


def _pairs(items: list[dict], pred_dir: Path, suffix: str) -> list[np.ndarray]:
    """:func:`scripts.metrics.region_pairs` of each item's ``<stem><suffix>`` against its membrane label."""
    pairs = []
    for it in items:
        label = np.asarray(Image.open(it["label"]).convert("L")) > 0
        pred = np.asarray(Image.open(pred_dir / f"{Path(it['image']).stem}{suffix}"))
        pairs.append(region_pairs(pred, label, segments=suffix == "_instances.png"))
    return pairs


def _neuron_scores(items: list[dict], pred_dir: Path) -> dict[str, float]:
    """The ISBI 2012 challenge's V_rand and V_info of ``<stem>_instances.png`` (neuron segments) against the
    membrane labels, pooled over the images and their mean, and of the connected components of ``<stem>_seg.png``
    beside them; empty without instance files."""
    if not all((pred_dir / f"{Path(it['image']).stem}_instances.png").is_file() for it in items):
        return {}
    scores = {}
    for prefix, suffix in (("", "_instances.png"), ("connected components: ", "_seg.png")):
        pairs = _pairs(items, pred_dir, suffix)
        pooled = pooled_rand_info(pairs)
        per_image = np.asarray([pooled_rand_info([pr]) for pr in pairs])
        scores[f"{prefix}V_rand"], scores[f"{prefix}V_info"] = pooled
        scores[f"{prefix}mean V_rand"], scores[f"{prefix}mean V_info"] = per_image.mean(axis=0)
    return {k: float(v) for k, v in scores.items()}


def _mitochondria_scores(items: list[dict], pred_dir: Path) -> dict[str, float]:
    """Object precision, recall and F1 at IoU 0.5, counts pooled over the images, of ``<stem>_instances.png``
    against the label's connected components, and of the connected components of ``<stem>_seg.png`` beside them."""
    ours, cc = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for it in items:
        stem = Path(it["image"]).stem
        if not (pred_dir / f"{stem}_instances.png").is_file():
            return {}
        label = np.asarray(Image.open(it["label"]).convert("L")) > 0
        ours += object_counts(np.asarray(Image.open(pred_dir / f"{stem}_instances.png")), label)
        cc += object_counts(np.asarray(Image.open(pred_dir / f"{stem}_seg.png").convert("L")) > 0, label)
    return {**object_f1(ours), **object_f1(cc, "connected components: ")}


OBJECT_SCORES = {"nuclei": _object_scores, "neurons": _neuron_scores, "mitochondria": _mitochondria_scores}


def _errors(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """RGB error map of binary masks: red false positive, green true positive, blue false negative."""
    return np.stack([pred & ~label, pred & label, label & ~pred], -1).astype(np.float32)


def _plot_grid(rows: list[list[tuple]], out_file: str | os.PathLike, panel: float, dpi: int, fontsize: int) -> None:
    """Save a grid of ``(data, cmap, title)`` panels, one list per row, without axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(panel * len(rows[0]), panel * len(rows)), squeeze=False)
    for r, panels in enumerate(rows):
        for c, (data, cmap, title) in enumerate(panels):
            axes[r, c].imshow(data, cmap=cmap)
            axes[r, c].set_title(title, fontsize=fontsize)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)


def plot_examples(
    items: list[dict], pred_dir: str | os.PathLike, out_file: str | os.PathLike, per_group: int = 2
) -> None:
    """A grid with one row per example (``per_group`` of each image type): image, ground truth, prediction and
    the errors (green: true positive, red: false positive, blue: false negative)."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_group[it.get("group", "all")].append(it)
    rows = []
    for it in (it for g in sorted(by_group) for it in by_group[g][:per_group]):
        stem = Path(it["image"]).stem
        image = np.asarray(Image.open(it["image"]).convert("L"))
        label = np.asarray(Image.open(it["label"]).convert("L")) > 0
        pred = np.asarray(Image.open(Path(pred_dir) / f"{stem}_seg.png")) > 0
        rows.append(
            [
                (image, "gray", f"{it.get('group', '')} {stem[:8]} {image.shape[1]}x{image.shape[0]}"),
                (label, "gray", "ground truth"),
                (pred, "gray", "prediction"),
                (_errors(pred, label), None, f"errors, Dice {dice(pred, label):.3f}"),
            ]
        )
    _plot_grid(rows, out_file, panel=3, dpi=80, fontsize=9)


def plot_instances(
    items: list[dict], pred_dir: str | os.PathLike, out_file: str | os.PathLike, per_group: int = 2
) -> None:
    """A grid with one row per example (``per_group`` of each image type): the true nuclei, the connected components
    of the mask (the pixel answer) and the predicted instances, each nucleus outlined in its own colour, with the
    image's DSB2018 score."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_group[it.get("group", "all")].append(it)
    rows = []
    for it in (it for g in sorted(by_group) for it in by_group[g][:per_group]):
        stem = Path(it["image"]).stem
        image = np.asarray(Image.open(it["image"]).convert("L")).astype(np.float32)
        true = as_instances(np.asarray(Image.open(it["label"])))
        seg = as_instances(np.asarray(Image.open(Path(pred_dir) / f"{stem}_seg.png")) > 0)
        pred = np.asarray(Image.open(Path(pred_dir) / f"{stem}_instances.png")).astype(np.int64)
        dsb = [dsb_score(p, true) for p in (seg, pred)]
        rows.append(
            [
                (outline_objects(image, true), None, f"{it.get('group', '')} {stem[:8]}: {int(true.max())} nuclei"),
                (outline_objects(image, seg), None, f"connected components: {int(seg.max())}, DSB {dsb[0]:.2f}"),
                (outline_objects(image, pred), None, f"instances: {int(pred.max())}, DSB {dsb[1]:.2f}"),
            ]
        )
    _plot_grid(rows, out_file, panel=4, dpi=80, fontsize=9)


def plot_segments(items: list[dict], pred_dir: str | os.PathLike, out_file: str | os.PathLike, count: int = 2) -> None:
    """Neurons: for ``count`` images, the image, the true neurons (regions between the labelled membranes) and the
    predicted segments (``<stem>_instances.png``), each region in its own colour, with the image's V_rand and V_info."""
    from skimage.color import label2rgb

    rows = []
    for it in items[:count]:
        stem = Path(it["image"]).stem
        image = np.asarray(Image.open(it["image"]).convert("L")).astype(np.float32) / 255
        membrane = np.asarray(Image.open(it["label"]).convert("L")) > 0
        true = boundary_regions(membrane)
        pred = np.asarray(Image.open(Path(pred_dir) / f"{stem}_instances.png")).astype(np.int64)
        v_rand, v_info = pooled_rand_info([region_pairs(pred, membrane, segments=True)])
        rows.append(
            [
                (image, "gray", stem),
                (label2rgb(true, image, bg_label=0, alpha=0.5), None, f"true neurons: {int(true.max())}"),
                (
                    label2rgb(pred, image, bg_label=0, alpha=0.5),
                    None,
                    f"segments: {int(pred.max())}, V_rand {v_rand:.3f}, V_info {v_info:.3f}",
                ),
            ]
        )
    _plot_grid(rows, out_file, panel=4, dpi=70, fontsize=9)


def plot_training_curves(tb_dir: str | os.PathLike, out_file: str | os.PathLike) -> dict:
    """Learning curve from TensorBoard event files: training loss (per epoch mean) and, per epoch, the validation
    mean Dice and, when logged (objects), the validation DSB2018 score, against epochs and hours of training (the
    events' wall time; runs resumed across sessions count only their own time, not the gaps between them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    times: dict[int, float] = {}  # wall time of each validation
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                scalars[tag][e.step] = e.value
                if tag == "val_mean_dice":
                    times[e.step] = e.wall_time
    loss = scalars.get("train_loss", {})
    dice = scalars.get("val_mean_dice", {})
    if not dice:
        raise ValueError(f"no val_mean_dice in the TensorBoard logs of {tb_dir}")
    epochs = sorted(dice)
    iters_per_epoch = max(loss) // max(epochs) if loss else 1
    epoch_loss = [
        np.mean([v for s, v in loss.items() if (e - 1) * iters_per_epoch < s <= e * iters_per_epoch] or [np.nan])
        for e in epochs
    ]
    # hours: the sum of the gaps between validations, a gap over 3 median epochs (a pause between sessions)
    # counted as one median epoch
    gaps = np.diff([times[e] for e in epochs]) if len(epochs) > 1 else np.zeros(0)
    median = float(np.median(gaps)) if gaps.size else 0.0
    gaps = np.where(gaps > 3 * median, median, gaps)
    hours = np.concatenate([[median], median + np.cumsum(gaps)]) / 3600
    dsb = scalars.get("val_dsb_score", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, epoch_loss, "C0-o", markersize=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (mean over the epoch)")
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [dice[e] for e in epochs], "C1-o", markersize=3, label="validation mean Dice")
    if dsb:
        ax2.plot(epochs, [dsb.get(e, np.nan) for e in epochs], "C2-o", markersize=3, label="validation DSB2018 score")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right")
    top = ax2.secondary_xaxis(
        "top", functions=(lambda e: np.interp(e, epochs, hours), lambda h: np.interp(h, hours, epochs))
    )
    top.set_xlabel("hours of training")
    fig.tight_layout()
    fig.savefig(out_file, dpi=80)
    plt.close(fig)
    best = max(epochs, key=lambda e: dice[e])
    result = {
        "epochs": len(epochs),
        "hours": round(float(hours[-1]), 2),
        "best_epoch": best,
        "best_val_mean_dice": dice[best],
    }
    if dsb:
        best_dsb = max(dsb, key=dsb.get)
        result.update(
            best_dsb_epoch=best_dsb, best_val_dsb_score=dsb[best_dsb], val_dsb_score={e: dsb[e] for e in sorted(dsb)}
        )
    result["val_mean_dice"] = {e: dice[e] for e in epochs}
    return result


_ITER = re.compile(r"Epoch: \d+/\d+, Iter: \d+/(\d+) -- train_loss")
_VAL = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?val_mean_dice: ([0-9.]+)")


def parse_log(path: str | os.PathLike) -> dict:
    """Validation Dice by training step from a ``monai.bundle run`` training log: ``{"steps_per_epoch": n, "steps":
    [...], "val_mean_dice": [...]}`` (steps = epoch x iterations per epoch, as the log's ``Iter: i/n`` gives)."""
    steps_per_epoch, points = None, {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if steps_per_epoch is None and (m := _ITER.search(line)):
            steps_per_epoch = int(m.group(1))
        elif m := _VAL.search(line):
            points[int(m.group(1))] = float(m.group(2))
    if not points or steps_per_epoch is None:
        raise ValueError(f"{path}: no training iterations or no val_mean_dice lines (a monai.bundle run training log?)")
    epochs = sorted(points)
    return {
        "steps_per_epoch": steps_per_epoch,
        "steps": [e * steps_per_epoch for e in epochs],
        "val_mean_dice": [points[e] for e in epochs],
    }


def _named_paths(value: Any, option: str) -> dict:
    """``value`` as given on the command line for ``option``: it must have been parsed into a dict of name: path."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"--{option} must be a dict of name: path with each path quoted, e.g. "
            f"--{option} \"{{'A': 'runs/a.nii.gz', 'B': 'runs/b.nii.gz'}}\"; got {value!r}."
        )
    return dict(value)


def logs(logs: dict, out: str) -> dict:
    """Figure ``out`` (PNG) of the validation Dice against training steps of each training log in ``logs`` (name:
    path), with each run's best marked; the curves go to ``<out>.json``."""
    logs = _named_paths(logs, "logs")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: parse_log(path) for name, path in logs.items()}
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, c) in enumerate(curves.items()):
        best = int(np.argmax(c["val_mean_dice"]))
        c["best_step"], c["best_val_mean_dice"] = c["steps"][best], c["val_mean_dice"][best]
        ax.plot(
            c["steps"],
            c["val_mean_dice"],
            f"C{i}-o",
            markersize=3,
            label=f"{name} (best {c['best_val_mean_dice']:.3f})",
        )
        ax.plot(c["best_step"], c["best_val_mean_dice"], f"C{i}*", markersize=12)
        print(f"{name}: best validation mean Dice {c['best_val_mean_dice']:.4f} at step {c['best_step']}")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation mean Dice")
    ax.set_ylim(bottom=max(0.0, min(min(c["val_mean_dice"]) for c in curves.values()) - 0.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    out_path.with_suffix(".json").write_text(json.dumps(curves, indent=1))
    return curves


def main(
    datalist: str,
    pred_dir: str,
    out: str,
    key: str = "validation",
    tb_dir: str | None = None,
    objects: str = "nuclei",
) -> None:
    """Write ``report.json``, ``examples.png``, ``instances.png`` (when the predictions hold instances) and
    ``training_curves.png`` (with ``tb_dir``) to ``out``; print a table. ``objects``: which object scores
    (``nuclei``: DSB2018 score; ``neurons``: the ISBI 2012 V_rand and V_info; ``mitochondria``: object F1)."""
    items = load_datalist(datalist, key)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"split": key, "objects": objects, "scores": score_predictions(items, pred_dir, objects)}
    plot_examples(items, pred_dir, out_dir / "examples.png")
    if all((Path(pred_dir) / f"{Path(it['image']).stem}_instances.png").is_file() for it in items):
        if objects == "neurons":
            plot_segments(items, pred_dir, out_dir / "segments.png")
        else:
            plot_instances(items, pred_dir, out_dir / "instances.png")
        if objects == "nuclei":
            report["errors at IoU 0.5"] = error_counts(items, pred_dir)
    if tb_dir:
        report["training"] = plot_training_curves(tb_dir, out_dir / "training_curves.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=4))
    header = "| images | n | " + " | ".join(k for k in next(iter(report["scores"].values())) if k != "images") + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, s in report["scores"].items():
        lines.append(
            f"| {name} | {s['images']} | " + " | ".join(f"{v:.4f}" for k, v in s.items() if k != "images") + " |"
        )
    for name, counts in report.get("errors at IoU 0.5", {}).items():
        lines.append(f"errors at IoU 0.5, {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print("\n".join(lines))


def score_volume(pred: np.ndarray, label: np.ndarray) -> dict:
    """Pooled scores of a binary ``(X, Y, Z)`` volume against its label, and the mean of the per-section Dice."""
    p, t = torch.from_numpy(pred > 0)[None, None].float(), torch.from_numpy(label > 0)[None, None].float()
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape[2:])} differs from label shape {tuple(t.shape[2:])}")
    pooled = ConfusionMatrixMetric(metric_name=list(_POOLED), compute_sample=False, reduction="sum")
    pooled(p, t)
    sections = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    sections(p[0].permute(3, 0, 1, 2), t[0].permute(3, 0, 1, 2))  # (Z, 1, X, Y): one Dice per section
    scores = {_NAMES[m]: float(v) for m, v in zip(_POOLED, pooled.aggregate(), strict=False)}
    scores["mean section Dice"] = float(sections.aggregate())
    return scores


def volumes(label: str, preds: dict, out: str, image: str | None = None, sections: int = 2) -> dict:
    """Scores of each segmented volume in ``preds`` (name: NIfTI path) against ``label``, printed as a table and
    written to ``<out>.json``: pooled pixel scores, and object precision, recall and F1 at IoU 0.5 (3D objects
    against the label's connected components) of ``<stem>_instances.nii.gz`` beside the ``_seg`` file and of the
    mask's connected components; with ``image``, a figure ``out`` (PNG) of ``sections`` evenly spaced sections: image,
    ground truth, then each prediction's errors (green: true positive, red: false positive, blue: false negative)."""
    import nibabel as nib
    from skimage.color import label2rgb

    preds = _named_paths(preds, "preds")
    truth = np.asarray(nib.load(label).dataobj) > 0
    volumes_ = {name: np.asarray(nib.load(path).dataobj) > 0 for name, path in preds.items()}
    report = {name: score_volume(v, truth) for name, v in volumes_.items()}
    instances_ = {}
    for name, path in preds.items():  # 3D objects: <stem>_instances beside <stem>_seg, and connected components
        instances = Path(str(path).replace("_seg.", "_instances."))
        if instances.is_file() and instances != Path(path):
            instances_[name] = np.asarray(nib.load(instances).dataobj)
            report[name].update(object_f1(object_counts(instances_[name], truth)))
        report[name].update(object_f1(object_counts(volumes_[name], truth), "connected components: "))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".json").write_text(json.dumps({"label": str(label), "scores": report}, indent=4))
    keys = list(next(iter(report.values())))
    print("| prediction | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, sc in report.items():
        print(f"| {name} | " + " | ".join(f"{sc[k]:.4f}" for k in keys) + " |")
    if image:
        img = np.asarray(nib.load(image).dataobj)
        rows = []
        for z in np.linspace(0, truth.shape[2] - 1, sections).round().astype(int):
            t, section = reverse_axes(truth[..., z]), reverse_axes(img[..., z])  # (Y, X), as the files show them
            panels = [(section, "gray", f"section {z}"), (t, "gray", "ground truth")]
            for name, v in volumes_.items():
                p = reverse_axes(v[..., z])
                panels.append((_errors(p, t), None, f"{name}, IoU {iou(p, t):.3f}"))
                if name in instances_:
                    objects = reverse_axes(instances_[name][..., z])
                    title = f"{name}: 3D objects (F1 {report[name]['object F1']:.3f})"
                    gray = section.astype(np.float64)
                    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-8)
                    panels.append((label2rgb(objects, gray, bg_label=0, alpha=0.45), None, title))
            rows.append(panels)
        _plot_grid(rows, out_path, panel=4, dpi=60, fontsize=10)
    return report


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of every pixel of a 2D mask to its nearest foreground pixel (inf without one)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return np.asarray(distance_transform_edt((~mask)[None]))[0]


def score_tolerance(pairs: list[tuple[np.ndarray, np.ndarray]], pixels: tuple[float, ...] = (1, 2)) -> dict:
    """Boundary tolerance of binary 2D ``(prediction, label)`` pairs, pooled over the pairs; for each distance ``d``
    (Euclidean, pixels) in ``pixels``:

    - ``errors within d``: share of the wrong pixels that lie within ``d`` of the other mask (a false positive within
      ``d`` of the label, a false negative within ``d`` of the prediction): a boundary drawn up to ``d`` pixels off;
    - ``Dice forgiving d``: the pooled Dice with those errors not counted;
    - ``surface Dice d``: MONAI's normalised surface Dice with tolerance ``d``, mean over the pairs;
    - ``label eroded d``, ``label dilated d``: the pooled Dice of each label against itself drawn ``d`` pixels
      narrower (wider) on every side, i.e. what a width convention off by ``d`` costs a perfect segmentation.
    """
    tp = fp = fn = 0
    near = {d: [0, 0] for d in pixels}  # d: [near false positives, near false negatives]
    width = {d: [0, 0] for d in pixels}  # d: [size of the eroded labels, size of the dilated labels]
    surface = {d: SurfaceDiceMetric(class_thresholds=[float(d)], include_background=False) for d in pixels}
    label_size = 0
    for pred, label in pairs:
        pred, label = np.asarray(pred) > 0, np.asarray(label) > 0
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        tp += int((pred & label).sum())
        fp_mask, fn_mask = pred & ~label, label & ~pred
        fp, fn, label_size = fp + int(fp_mask.sum()), fn + int(fn_mask.sum()), label_size + int(label.sum())
        to_label, to_pred, to_outside = _distance_to(label), _distance_to(pred), _distance_to(~label)
        one_hot = [torch.from_numpy(np.stack([~m, m]))[None].float() for m in (pred, label)]
        for d in pixels:
            near[d][0] += int((fp_mask & (to_label <= d)).sum())
            near[d][1] += int((fn_mask & (to_pred <= d)).sum())
            width[d][0] += int((label & (to_outside > d)).sum())
            width[d][1] += int((to_label <= d).sum())
            with warnings.catch_warnings():  # MONAI 1.6 passes its own deprecated always_return_as_numpy
                warnings.simplefilter("ignore", FutureWarning)
                surface[d](*one_hot)
    scores = {"pooled Dice": 2 * tp / max(2 * tp + fp + fn, 1)}
    for d in pixels:
        far = fp + fn - sum(near[d])
        scores[f"errors within {d}"] = sum(near[d]) / max(fp + fn, 1)
        scores[f"Dice forgiving {d}"] = 2 * tp / max(2 * tp + far, 1)
        scores[f"surface Dice {d}"] = float(surface[d].aggregate())
        # an eroded label lies inside the label, a dilated one around it: the overlap is the smaller of the two
        scores[f"label eroded {d}"] = 2 * width[d][0] / max(width[d][0] + label_size, 1)
        scores[f"label dilated {d}"] = 2 * label_size / max(width[d][1] + label_size, 1)
    return scores


def tolerance(
    datalist: str, pred_dir: str, key: str = "validation", pixels: tuple = (1, 2), out: str | None = None
) -> dict:
    """:func:`score_tolerance` of ``<pred_dir>/<stem>_seg.png`` against the labels of the ``key`` split, printed as a
    table and, with ``out``, written to that JSON file."""
    pairs = [
        tuple(m[0, 0].numpy() for m in _prediction_and_label(it, Path(pred_dir))) for it in load_datalist(datalist, key)
    ]
    pixels = tuple(pixels) if isinstance(pixels, (list, tuple)) else (pixels,)
    scores = score_tolerance(pairs, pixels)
    print(
        "| "
        + " | ".join(scores)
        + " |\n"
        + "|---" * len(scores)
        + "|\n| "
        + " | ".join(f"{v:.4f}" for v in scores.values())
        + " |"
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"split": key, "images": len(pairs), "scores": scores}, indent=4))
    return scores


if __name__ == "__main__":
    from scripts import one_line_errors

    one_line_errors()
    import sys

    commands = {"volumes": volumes, "logs": logs, "tolerance": tolerance}
    if len(sys.argv) > 1 and sys.argv[1] in commands:
        fire.Fire(quiet(commands[sys.argv[1]]), command=sys.argv[2:])
    else:
        fire.Fire(main)
