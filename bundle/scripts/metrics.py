"""Scores of segmentations against their labels, on numpy arrays: object matching (IoU of every pair of objects,
TP/(TP+FP+FN) per IoU threshold, the DSB2018 score), object counts and F1 at one IoU, the ISBI 2012 challenge's
foreground-restricted Rand and information scores, and the Dice of binary masks.

MONAI metrics built on these (for evaluators) are in :mod:`scripts.evaluation`; :mod:`scripts.report` applies them to
prediction files and draws the figures. Conventions as in :mod:`scripts.instances`: an instance label image holds 0 for
background and ``1..N``, a binary mask counts as its connected components; arrays ``(*spatial)``, 2D or 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from scipy import ndimage

from scripts.instances import as_instances, join_boundaries

__all__ = [
    "DSB_THRESHOLDS",
    "iou_matrix",
    "matching_ratios",
    "dsb_score",
    "object_counts",
    "object_f1",
    "object_errors",
    "boundary_regions",
    "region_pairs",
    "rand_info_terms",
    "rand_info_from_pairs",
    "info_split_merge",
    "pool_pairs",
    "rand_info_scores",
    "pooled_rand_info",
    "dice",
    "iou",
]

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _overlaps(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_true, n_pred)`` pixel counts of every pair's intersection and the areas of the true and the predicted
    objects, of two instance label images of the same shape (ids renumbered ``1..N`` first)."""
    pred, true = as_instances(pred), as_instances(true)
    n_pred, n_true = int(pred.max()), int(true.max())
    joint = np.bincount(
        true.ravel().astype(np.int64) * (n_pred + 1) + pred.ravel(), minlength=(n_true + 1) * (n_pred + 1)
    )
    joint = joint.reshape(n_true + 1, n_pred + 1)
    return joint[1:, 1:].astype(np.float64), joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(n_true, n_pred)`` intersection over union of every pair of objects of two instance label images of the same
    shape (ids renumbered ``1..N`` first)."""
    inter, area_true, area_pred = _overlaps(pred, true)
    union = area_true[:, None] + area_pred[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matching_ratios(
    pred: np.ndarray, true: np.ndarray, thresholds: tuple[float, ...] = DSB_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Object matching of one image at each IoU threshold ``t``: a predicted and a true object match when their IoU
    exceeds ``t`` (for ``t >= 0.5`` a match is unique), ``TP`` matched pairs, ``FP`` unmatched predictions, ``FN``
    unmatched true objects. Returns arrays over ``thresholds``: ``ratio`` = TP/(TP+FP+FN) (the DSB2018 score of the
    image is its mean over 0.50..0.95), ``precision``, ``recall``, ``f1``; all 1 when both images are empty."""
    iou = iou_matrix(pred, true)
    n_true, n_pred = iou.shape
    thresholds_arr = np.asarray(thresholds, dtype=np.float64)
    if n_true == 0 and n_pred == 0:
        ones = np.ones_like(thresholds_arr)
        return {"ratio": ones, "precision": ones, "recall": ones, "f1": ones}
    tp = (iou[None] > thresholds_arr[:, None, None]).sum(axis=(1, 2)).astype(np.float64)
    fp, fn = n_pred - tp, n_true - tp
    return {
        "ratio": tp / (tp + fp + fn),
        "precision": np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0),
        "recall": np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0),
        "f1": np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0),
    }


def dsb_score(pred: np.ndarray, true: np.ndarray) -> float:
    """The DSB2018 score of one image: the mean over IoU thresholds 0.50, 0.55, ..., 0.95 of TP/(TP+FP+FN)."""
    return float(matching_ratios(pred, true)["ratio"].mean())


def object_counts(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """``[TP, FP, FN]`` of objects matched one to one at IoU above ``iou`` (>= 0.5) between two instance label
    images (a binary mask counts as its connected components)."""
    m = iou_matrix(pred, true)  # (n_true, n_pred)
    tp = int((m > iou).sum())
    return np.asarray([tp, m.shape[1] - tp, m.shape[0] - tp])


def object_f1(counts: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Object ``precision``, ``recall`` and ``F1`` of ``[TP, FP, FN]`` counts (:func:`object_counts`, summed over
    images to pool them), each key after ``prefix``; 0 where a count is 0."""
    tp, fp, fn = (int(c) for c in counts)
    return {
        f"{prefix}object precision": tp / max(tp + fp, 1),
        f"{prefix}object recall": tp / max(tp + fn, 1),
        f"{prefix}object F1": 2 * tp / max(2 * tp + fp + fn, 1),
    }


def object_errors(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> dict[str, int]:
    """Why objects fail to match one to one at IoU above ``iou`` (>= 0.5), for two instance label images of the same
    shape: counts ``true``, ``pred``, ``tp`` (matched pairs); each unmatched true object once, in this order, as
    ``merged`` (a prediction covers at least half of it and half of another true object), ``split`` (two or more
    predictions lie mostly inside it), ``missed`` (predictions cover less than half of it) or ``loose`` (the rest: one
    prediction, outlined too loosely or too tightly); ``fp`` unmatched predictions, of which ``fp_background`` lie
    mostly outside every true object. Sum the counts over images to pool them."""
    inter, area_true, area_pred = _overlaps(pred, true)
    n_true, n_pred = inter.shape
    union = area_true[:, None] + area_pred[None, :] - inter
    matched = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0) > iou  # (n_true, n_pred)
    covers = inter >= 0.5 * np.maximum(area_true[:, None], 1)  # prediction p covers half of true object t
    inside = inter > 0.5 * np.maximum(area_pred[None, :], 1)  # prediction p lies mostly inside t
    unmatched = ~matched.any(axis=1)
    merged = unmatched & (covers & (covers.sum(axis=0, keepdims=True) >= 2)).any(axis=1)
    split = unmatched & ~merged & (inside.sum(axis=1) >= 2)
    missed = unmatched & ~merged & ~split & (inter.sum(axis=1) < 0.5 * area_true)
    fp = ~matched.any(axis=0)
    return {
        "true": n_true,
        "pred": n_pred,
        "tp": int(matched.sum()),
        "merged": int(merged.sum()),
        "split": int(split.sum()),
        "missed": int(missed.sum()),
        "loose": int((unmatched & ~merged & ~split & ~missed).sum()),
        "fp": int(fp.sum()),
        "fp_background": int((fp & (inter.sum(axis=0) <= 0.5 * area_pred)).sum()),
    }


def boundary_regions(boundary: np.ndarray) -> np.ndarray:
    """Connected components (face connectivity) of the non-boundary pixels: 0 on the boundary, 1..n the regions."""
    return ndimage.label(~boundary)[0]


def rand_info_scores(pred: np.ndarray, label: np.ndarray, segments: bool = False) -> tuple[float, float]:
    """The ISBI 2012 challenge's foreground-restricted Rand and information scores (alpha 0.5).

    ``label`` is a binary boundary (membrane) map of one image or volume; its neurons are the connected components
    of its non-boundary pixels (face connectivity), and only their pixels count (foreground-restricted). ``pred`` is
    a boundary map like it (``segments=False``: its regions are found the same way) or segment ids
    (``segments=True``, e.g. :func:`scripts.instances.segments_from_boundaries`); either way its boundary pixels
    (``0``) are joined to their nearest region (:func:`scripts.instances.join_boundaries`), as the challenge's
    evaluation thins the proposed boundaries. With ``p_ij`` the joint distribution of predicted region ``i`` and
    true region ``j`` over the counted pixels and ``s``, ``t`` its marginals (Arganda-Carreras et al., Front.
    Neuroanat. 2015):

    - ``V_rand = sum p_ij^2 / (0.5 sum_i s_i^2 + 0.5 sum_j t_j^2)`` (``1 -`` scikit-image's ``adapted_rand_error``),
    - ``V_info = I(S; T) / (0.5 H(S) + 0.5 H(T))``,

    both 1 for a perfect segmentation. Returns ``(V_rand, V_info)``, NaN without any true region.
    """
    return rand_info_from_pairs(region_pairs(pred, label, segments))


def region_pairs(pred: np.ndarray, label: np.ndarray, segments: bool = False) -> np.ndarray:
    """``(2, n)`` int64: the predicted and true region of each counted pixel (see :func:`rand_info_scores`)."""
    seg_true = boundary_regions(np.asarray(label) > 0)
    seg_pred = np.asarray(pred).astype(np.int64) if segments else boundary_regions(np.asarray(pred) > 0)
    seg_pred = join_boundaries(seg_pred)
    mask = seg_true > 0
    return np.stack([seg_pred[mask], seg_true[mask]]).astype(np.int64)


def rand_info_terms(pairs: np.ndarray) -> dict[str, float]:
    """``V_rand``, ``V_info`` and V_info's split and merge terms (``V_info_split``, ``V_info_merge``; see
    :func:`info_split_merge`) of ``(2, n)`` region pairs, from one count of their joint distribution; NaN without
    pairs."""
    if pairs.shape[1] == 0:
        return dict.fromkeys(("V_rand", "V_info", "V_info_split", "V_info_merge"), float("nan"))
    n = float(pairs.shape[1])
    first, second = (row - row.min() for row in np.asarray(pairs, np.int64))
    # each pair as one integer, one 1-D count (np.unique over columns sorts the pairs as records: ~90x slower); the
    # marginal counts are sums of the joint ones over the distinct pairs, not two more sorts of every pair
    width = int(second.max()) + 1
    codes, joint = np.unique(first * width + second, return_counts=True)
    s = np.bincount(np.unique(codes // width, return_inverse=True)[1], weights=joint)
    t = np.bincount(np.unique(codes % width, return_inverse=True)[1], weights=joint)
    p, s, t = joint / n, s / n, t / n
    h_s, h_t, h_st = -(s * np.log(s)).sum(), -(t * np.log(t)).sum(), -(p * np.log(p)).sum()
    mutual = h_s + h_t - h_st
    return {
        "V_rand": float((p**2).sum() / (0.5 * (s**2).sum() + 0.5 * (t**2).sum())),
        "V_info": float(mutual / (0.5 * h_s + 0.5 * h_t) if h_s + h_t > 0 else 1.0),
        "V_info_split": float(mutual / h_s if h_s > 0 else 1.0),
        "V_info_merge": float(mutual / h_t if h_t > 0 else 1.0),
    }


def rand_info_from_pairs(pairs: np.ndarray) -> tuple[float, float]:
    """``(V_rand, V_info)`` of ``(2, n)`` region pairs; pool images by concatenating their pairs with ids made
    distinct per image (:func:`pool_pairs`)."""
    scores = rand_info_terms(pairs)
    return scores["V_rand"], scores["V_info"]


def info_split_merge(pairs: np.ndarray) -> tuple[float, float]:
    """The split and merge terms of V_info of ``(2, n)`` region pairs (Arganda-Carreras et al. 2015), ``I(S; T) /
    H(S)`` and ``I(S; T) / H(T)`` with ``S`` the predicted and ``T`` the true regions: true regions cut into several
    predicted ones lower the first, predicted regions spanning several true ones the second; V_info is their harmonic
    mean. A term whose entropy is 0 is 1; NaN without pairs."""
    scores = rand_info_terms(pairs)
    return scores["V_info_split"], scores["V_info_merge"]


def pool_pairs(pairs: Sequence[np.ndarray]) -> np.ndarray:
    """Several images' :func:`region_pairs` as one ``(2, n)`` array, each image's region ids made distinct."""
    offset = np.zeros((2, 1), np.int64)
    shifted = []
    for pr in pairs:
        shifted.append(pr + offset)
        if pr.size:
            offset = offset + pr.max(axis=1, keepdims=True) + 1
    return np.concatenate(shifted, axis=1) if shifted else np.zeros((2, 0), np.int64)


def pooled_rand_info(pairs: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(V_rand, V_info)`` over several images' :func:`region_pairs`, each image's regions kept distinct."""
    return rand_info_from_pairs(pool_pairs(pairs))


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (MONAI's ``compute_dice``; 1 when both are empty). Pool images by
    concatenating their flattened masks."""
    pred, label = np.asarray(pred) > 0, np.asarray(label) > 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    p, t = (torch.from_numpy(m.reshape(1, 1, -1)).float() for m in (pred, label))
    return float(compute_dice(p, t, include_background=True, ignore_empty=False).nan_to_num(1.0))


def iou(pred: np.ndarray, label: np.ndarray) -> float:
    """Intersection over union of two binary masks of the same shape (MONAI's ``compute_iou``; 1 when both are
    empty)."""
    pred, label = np.asarray(pred) > 0, np.asarray(label) > 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    p, t = (torch.from_numpy(m.reshape(1, 1, -1)).float() for m in (pred, label))
    return float(compute_iou(p, t, include_background=True, ignore_empty=False).nan_to_num(1.0))
