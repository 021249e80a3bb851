"""Evaluation helpers that MONAI and ignite lack: pixel-level inputs for ignite's epoch metrics, the complement class
of a binary segmentation, MONAI metrics of the ISBI 2012 challenge's foreground-restricted Rand and information scores
and of object matching (their array versions: :mod:`scripts.metrics`), and loading the checkpoint ensemble (the top-k
checkpoints by validation Dice that training keeps)."""

from __future__ import annotations

import copy
import glob
import logging
import os
from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import CumulativeIterationMetric
from monai.transforms import Activationsd, Compose, CopyItemsd, MeanEnsembled

from scripts import as_bool
from scripts.metrics import DSB_THRESHOLDS, matching_ratios, rand_info_scores
from scripts.networks import load_weights
from scripts.transforms import has_object_targets

__all__ = [
    "has_ensemble",
    "pixel_pairs",
    "complement",
    "ForegroundRandInfo",
    "ObjectMatching",
    "pred_keys",
    "ensemble_postprocessing",
    "pick",
    "image_meta",
    "run",
    "ensemble_files",
    "load_ensemble",
    "reset_ensemble",
]

logger = logging.getLogger(__name__)


def pixel_pairs(pred_key: str = "prob", label_key: str = "label") -> Callable[[Sequence[dict]], tuple]:
    """Output transform for ignite's pixel-wise epoch metrics (``ROC_AUC``, ``CohenKappa``).

    Takes the evaluator's decollated output (a list of dicts of ``(C, *spatial)`` tensors) and returns
    ``(y_pred, y)``: every pixel of every image as 1-D float tensors, so the metric pools pixels over the dataset.
    """

    def _transform(output: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        y_pred = torch.cat([torch.as_tensor(o[pred_key]).detach().float().reshape(-1).cpu() for o in output])
        y = torch.cat([torch.as_tensor(o[label_key]).detach().float().reshape(-1).cpu() for o in output])
        return y_pred, y

    return _transform


def masks_from_engine(
    objects: bool | str = False, method: str = "nuclei", keys: Sequence[str] = ("pred", "label")
) -> Callable[[Sequence[dict]], list]:
    """Output transform of the Dice metrics: ``keys`` of the engine's decollated output, as ``from_engine`` gives
    them. Where ``objects`` and ``method`` give object targets (:func:`scripts.transforms.has_object_targets`), each
    ``(C, *spatial)`` tensor is cut to its first channel, the mask: the trainer's outputs and targets hold the centre
    map, contact map or star-convex distances after it, which a Dice of the segmentation must not average in (the
    evaluators' outputs hold the mask alone already)."""
    select = from_engine(list(keys))
    if not has_object_targets(objects, method):
        return select

    def _transform(output: Sequence[dict]) -> list:
        return [[t[:1] for t in values] for values in select(output)]

    return _transform


def complement(keys: Sequence[str] = ("pred", "label")) -> Callable[[Sequence[dict]], list]:
    """Output transform giving ``1 - x`` for each key of the decollated output, so that a metric of a binary
    segmentation's foreground scores its other class (e.g. the cell interior of a membrane segmentation)."""
    select = from_engine(list(keys))

    def _transform(output: Sequence[dict]) -> list:
        return [[1 - t for t in values] for values in select(output)]

    return _transform


class ForegroundRandInfo(CumulativeIterationMetric):
    """Per-image foreground-restricted Rand (``score="rand"``) or information (``score="info"``) score (see
    :func:`rand_info_scores`), averaged over images. ``y`` ``(B, 1, *spatial)``: the boundary label (boundary = 1);
    ``y_pred`` likewise a binary boundary map, or segment ids with ``segments=True`` (``Instancesd`` with
    ``"neurons"``). Wrap in ``IgniteMetricHandler`` to use it in an evaluator."""

    def __init__(self, score: str = "rand", segments: bool = False) -> None:
        super().__init__()
        if score not in ("rand", "info"):
            raise ValueError(f"score must be 'rand' or 'info', got {score!r}.")
        self.index = 0 if score == "rand" else 1
        self.segments = segments

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("ForegroundRandInfo needs the label.")
        scores = []
        for p, t in zip(y_pred, y, strict=True):
            pred = p[0].detach().cpu().numpy()
            pred = pred if self.segments else pred > 0.5
            scores.append(rand_info_scores(pred, t[0].detach().cpu().numpy() > 0.5, self.segments)[self.index])
        return torch.tensor(scores, dtype=torch.float32).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ForegroundRandInfo: no data to aggregate.")
        return torch.nanmean(data.float())


class ObjectMatching(CumulativeIterationMetric):
    """Object matching scores of instance label images ``(B, 1, *spatial)`` (predicted, true; a binary mask counts as
    its connected components), per image then averaged over images (:func:`scripts.metrics.matching_ratios`).

    ``score``: ``"dsb"`` the DSB2018 score (per image the mean over IoU thresholds 0.50, 0.55, ..., 0.95 of
    TP/(TP+FP+FN)); ``"ratio"``, ``"precision"``, ``"recall"`` or ``"f1"`` at the IoU threshold ``iou``. Wrap in
    ``IgniteMetricHandler`` to use it in an evaluator.
    """

    def __init__(self, score: str = "dsb", iou: float = 0.5) -> None:
        super().__init__()
        if score not in ("dsb", "ratio", "precision", "recall", "f1"):
            raise ValueError(f"score must be 'dsb', 'ratio', 'precision', 'recall' or 'f1', got {score!r}.")
        if score != "dsb" and round(iou, 2) not in DSB_THRESHOLDS:
            raise ValueError(f"iou must be one of {DSB_THRESHOLDS}, got {iou}.")
        self.score = score
        self.iou = round(iou, 2)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("ObjectMatching needs the label.")
        scores = []
        for p, t in zip(y_pred, y, strict=True):
            ratios = matching_ratios(p[0].detach().cpu().numpy(), t[0].detach().cpu().numpy())
            if self.score == "dsb":
                scores.append(float(ratios["ratio"].mean()))
            else:
                scores.append(float(ratios[self.score][DSB_THRESHOLDS.index(self.iou)]))
        return torch.tensor(scores, dtype=torch.float32).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ObjectMatching: no data to aggregate.")
        return torch.nanmean(data.float())


class ObjectMatchingHandler(IgniteMetricHandler):
    """:class:`ObjectMatching` as an evaluator metric (MONAI's ``IgniteMetricHandler``), on the engine's
    ``instances`` and ``true_instances`` unless ``output_transform`` says otherwise; ``score``, ``iou`` as there."""

    def __init__(
        self,
        score: str = "dsb",
        iou: float = 0.5,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        output_transform = output_transform or from_engine(["instances", "true_instances"])
        super().__init__(
            metric_fn=ObjectMatching(score, iou), output_transform=output_transform, save_details=save_details
        )


def pred_keys(networks: Sequence | None) -> list[str]:
    """``pred0, pred1, ...``: the output key of each network of a checkpoint ensemble (none when it is disabled)."""
    return [f"pred{i}" for i in range(len(networks or []))]


def ensemble_postprocessing(keys: Sequence[str], postprocessing: Compose) -> Compose:
    """The post-processing of a checkpoint ensemble whose networks write ``keys`` (:func:`pred_keys`): the sigmoid
    of each output and their mean as ``pred`` (one network's output is copied to ``pred``), then ``postprocessing``,
    the single network's, after its first transform (its own sigmoid of ``pred``). Empty ``keys`` (ensemble off):
    ``postprocessing`` itself."""
    keys = list(keys)
    if not keys:
        return postprocessing
    first = postprocessing.transforms[0]
    if not (isinstance(first, Activationsd) and all(first.sigmoid)):
        raise ValueError(f"the post-processing must start with the sigmoid (Activationsd), got {first}.")
    mean = MeanEnsembled(keys, output_key="pred") if len(keys) > 1 else CopyItemsd(keys, names="pred")
    return Compose([Activationsd(keys, sigmoid=True), mean, *postprocessing.transforms[1:]])


def pick(ensemble: bool | str, ensemble_evaluator: object, single_evaluator: object) -> object:
    """The evaluator that ``--ensemble`` chooses: the checkpoint ensemble's or the single network's."""
    return ensemble_evaluator if as_bool(ensemble) else single_evaluator


def image_meta(batch: Sequence[dict]) -> list[dict]:
    """The image metadata of each item of a decollated batch (``MetricsSaver``'s ``batch_transform``: file names)."""
    return [item["image"].meta for item in batch]


def run(engine: object | None) -> None:
    """Run ``engine`` unless it is disabled (``None``)."""
    if engine is not None:
        engine.run()


def has_ensemble(ensemble_dir: str) -> bool:
    """evaluate.json's ``ensemble`` default: evaluate the checkpoint ensemble too when ``ensemble_dir`` holds one
    (a training's top-k; the default ``models/`` has none, ``models/nuclei_fast`` has one); ``--ensemble true`` insists.
    """
    return bool(glob.glob(os.path.join(ensemble_dir, "*.pt")))


def ensemble_files(ensemble_dir: str) -> list[str]:
    """The checkpoint files of the ensemble folder, best validation score first (``model_key_metric=<score>.pt``)."""
    files = glob.glob(os.path.join(ensemble_dir, "*.pt"))
    if not files:
        raise FileNotFoundError(f"no checkpoints in {ensemble_dir}: train first (train.json keeps the top-k there).")

    def score(f: str) -> float:
        try:
            return float(os.path.basename(f).rsplit("=", 1)[-1][: -len(".pt")])
        except ValueError:
            return float("-inf")

    return sorted(files, key=score, reverse=True)


def load_ensemble(
    network: torch.nn.Module, ensemble_dir: str, device: str | torch.device, fold_batch_norm: bool | str = False
) -> list[torch.nn.Module]:
    """One copy of ``network`` per checkpoint in ``ensemble_dir``, weights loaded, in eval mode on ``device``;
    with ``fold_batch_norm``, each copy's BatchNorm layers folded into its convolutions (inference only)."""
    members = []
    for f in ensemble_files(ensemble_dir):
        members.append(load_weights(copy.deepcopy(network), f, device, as_bool(fold_batch_norm)).to(device))
    return members


def reset_ensemble(ensemble_dir: str, resume: bool | str = False) -> None:
    """Start a training's checkpoint ensemble empty: remove ``model_key_metric=*.pt`` left in ``ensemble_dir`` by an
    earlier training (or shipped with the bundle), unless the training resumes, so the ensemble holds only the top-k
    checkpoints of this training."""
    if as_bool(resume):
        return
    removed = []
    for f in sorted(glob.glob(os.path.join(ensemble_dir, "model_key_metric=*.pt"))):
        try:
            os.remove(f)
            removed.append(os.path.basename(f))
        except FileNotFoundError:  # another process of a distributed run removed it first
            pass
    if removed:
        logger.info(f"removed the checkpoint ensemble of an earlier training from {ensemble_dir}: {', '.join(removed)}")
