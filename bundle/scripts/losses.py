"""Focal Tversky loss (paper section IV, eq. 11 and 14), built on MONAI's TverskyLoss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceLoss, TverskyLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from scripts.instances import STAR_SCALE

__all__ = ["FocalTverskyLoss", "ObjectLoss"]


class FocalTverskyLoss(_Loss):
    """``FTL = (1 - TI) ** gamma`` with the Tversky index ``TI = TP / (TP + alpha FP + beta FN)``.

    TI is computed per sample and channel over the spatial dimensions (over the batch too with ``batch=True``) by
    :class:`monai.losses.TverskyLoss`; ``alpha`` weighs false positives and ``beta`` false negatives, so
    ``beta > alpha`` favours recall (the paper's ``alpha=0.3, beta=0.7, gamma=0.75``). ``gamma=1`` gives the
    Tversky loss; ``alpha=beta=0.5, gamma=1`` gives the Dice loss. ``gamma < 1`` raises the loss (and its gradient)
    of well-segmented samples less than that of poorly segmented ones, focusing training on hard, small regions.

    ``input``: ``(B, C, *spatial)`` logits (with ``sigmoid``/``softmax``) or probabilities; ``target``: same shape,
    or ``(B, 1, *spatial)`` class indices with ``to_onehot_y=True``. Returns a scalar for ``"mean"``/``"sum"``,
    ``(B, C)`` (``(C,)`` with ``batch=True``) for ``"none"``.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}.")
        self.gamma = gamma
        self.tversky = TverskyLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            alpha=alpha,
            beta=beta,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            reduction=LossReduction.NONE,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_minus_ti = self.tversky(input.float(), target)  # (B, C, 1, ...) or (C, 1, ...) with batch=True
        one_minus_ti = one_minus_ti.reshape(one_minus_ti.shape[: 1 if self.tversky.batch else 2])
        # 1 - TI reaches 0 (or a hair below through the smoothing terms) on a perfect prediction, where a
        # fractional power has an infinite gradient: clamp at machine epsilon to keep gradients finite
        ftl = one_minus_ti.clamp(min=torch.finfo(torch.float32).eps) ** self.gamma
        if self.reduction == LossReduction.MEAN.value:
            return ftl.mean()
        if self.reduction == LossReduction.SUM.value:
            return ftl.sum()
        return ftl


class ObjectLoss(_Loss):
    """The loss of the objects model, whose output channels are the object mask, the centre map and, optionally, the
    contact map (:func:`scripts.instances.object_targets`): ``mask_loss`` (the Focal Tversky loss) on channel 0,
    plus ``centre_weight`` times the binary cross-entropy of channel 1 against the centre map (soft targets in
    [0, 1]), plus, with 3 channels, ``contact_weight`` times the binary cross-entropy and the Dice loss (over the
    batch, so that patches without contacts count) of channel 2 against the contact map; with ``rays``, ``2 +
    rays`` channels, ``distance_weight`` times StarDist's distance loss of channels ``2..`` (the star-convex
    distances over :data:`scripts.instances.STAR_SCALE`, predicted as sigmoids): the mean absolute error in pixels
    weighted by the true centre map, plus ``background_weight`` times the mean predicted distance outside objects.

    ``input``: ``(B, 2|3|2 + rays, *spatial)`` logits; ``target``: the same shape. Returns a scalar.
    """

    def __init__(
        self,
        mask_loss: _Loss,
        centre_weight: float = 1.0,
        contact_weight: float = 2.0,
        rays: int = 0,
        distance_weight: float = 0.2,
        background_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        self.mask_loss = mask_loss
        self.centre_weight = centre_weight
        self.contact_weight = contact_weight
        self.rays = int(rays)
        self.distance_weight = distance_weight
        self.background_weight = background_weight
        self.contact_dice = DiceLoss(sigmoid=True, batch=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        channels = (2 + self.rays,) if self.rays else (2, 3)
        if input.shape[1] not in channels or target.shape[1] != input.shape[1]:
            what = (
                f"{2 + self.rays} channels (mask, centre map, {self.rays} distances)"
                if self.rays
                else ("2 channels (mask, centre map) or 3 (mask, centre map, contact map)")
            )
            raise ValueError(f"ObjectLoss takes {what}, got {input.shape[1]} and {target.shape[1]}.")
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        loss = self.mask_loss(input[:, :1], target[:, :1])
        loss = loss + self.centre_weight * bce(input[:, 1:2].float(), target[:, 1:2].float())
        if self.rays:
            return loss + self.distance_weight * self._distance_loss(input[:, 2:].float(), target[:, 1:].float())
        if input.shape[1] == 3:
            logits, contact = input[:, 2:].float(), target[:, 2:].float()
            loss = loss + self.contact_weight * (bce(logits, contact) + self.contact_dice(logits, contact))
        return loss

    def _distance_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, rays, *spatial)``; ``target`` ``(B, 1 + rays, *spatial)``: the centre map, then the
        distances over ``STAR_SCALE``. In pixels, as StarDist's ``masked_loss_mae`` with its background term."""
        weight, distances = target[:, :1], target[:, 1:]
        predicted = torch.sigmoid(logits) * STAR_SCALE
        loss = (weight * (predicted - distances * STAR_SCALE).abs()).mean() / weight.mean().clamp_min(1e-6)
        return loss + self.background_weight * ((weight == 0) * predicted).mean()
