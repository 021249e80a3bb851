"""Transforms that MONAI lacks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.visualize import blend_images

from scripts import as_bool
from scripts.instances import instances_from_probabilities, object_targets, outline_objects

__all__ = ["Overlayd", "LabelTargetsd", "Instancesd"]


def _as_meta(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a float32 tensor with the metadata (file name, geometry) of ``like``, on its device."""
    tensor = torch.as_tensor(array, dtype=torch.float32, device=like.device)
    return MetaTensor(tensor, meta=dict(like.meta)) if isinstance(like, MetaTensor) else tensor


class LabelTargetsd(MapTransform):
    """The training target of a label ``(1, *spatial)`` (instance ids, or a mask with foreground > 0.5).

    ``objects=False``: the binary mask ``(1, *spatial)``. ``objects=True``: ``(2, *spatial)``, the object mask and
    the centre map of :func:`scripts.instances.object_targets` (a mask is taken as its connected components).
    ``instances_key``: also keep the instance ids ``(1, *spatial)`` under that key (for object scores).
    """

    def __init__(self, keys: KeysCollection, objects: bool | str = True, instances_key: str | None = None) -> None:
        super().__init__(keys)
        self.objects = as_bool(objects)
        self.instances_key = instances_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if self.instances_key is not None:
                d[self.instances_key] = label.clone()
            if self.objects:
                d[key] = _as_meta(object_targets(label[0].detach().cpu().numpy()), label)
            else:
                d[key] = (label >= 0.5).to(torch.float32)
        return d


class Instancesd(MapTransform):
    """Objects from the network's probabilities ``(2, *spatial)`` (object mask, centre map) under ``keys``: writes
    ``d[instances_key]`` = instance ids ``(1, *spatial)`` (:func:`scripts.instances.instances_from_probabilities`)
    and keeps only the mask channel ``(1, *spatial)`` under ``keys``, so the pixel pipeline after it is unchanged."""

    def __init__(
        self,
        keys: KeysCollection,
        instances_key: str = "instances",
        threshold: float = 0.5,
        seeds: str = "centre",
        h: float = 0.1,
        sigma: float = 1.0,
        min_size: int = 0,
        centre_weight: float = 8.0,
    ) -> None:
        super().__init__(keys)
        self.instances_key = instances_key
        self.params = {"threshold": threshold, "seeds": seeds, "h": h, "sigma": sigma, "min_size": min_size}
        self.params["centre_weight"] = centre_weight
        self.min_size = min_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            if prob.shape[0] != 2:
                raise ValueError(
                    f"Instancesd: {key!r} needs 2 channels (object mask, centre map), got {prob.shape[0]}."
                )
            p = prob.detach().float().cpu().numpy()
            instances = instances_from_probabilities(p[0], p[1], **self.params)
            d[self.instances_key] = _as_meta(instances[None], prob)
            # the mask channel; the pixels of objects under min_size pixels leave it (probability 0), so that the
            # mask is the union of the instances and the other probabilities are unchanged
            dropped = (p[0] >= self.params["threshold"]) & (instances == 0)
            d[key] = prob[:1].masked_fill(torch.as_tensor(dropped, device=prob.device)[None], 0.0)
        return d


class Overlayd(MapTransform):
    """Blend a segmentation over its image for viewing: writes ``d[output_key]`` = ``(3, *spatial)`` RGB in [0, 1].

    ``keys``: the image key (``(1, *spatial)``, any intensity range, rescaled to [0, 1]);
    ``label_key``: the binary segmentation ``(1, *spatial)``, drawn in colour with ``alpha`` opacity;
    ``instances_key``: instance ids ``(1, *spatial)``; when given and present, each object's outline is drawn in its own colour
    (scikit-image's ``find_boundaries`` and ``label2rgb``) over the blended picture.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "pred",
        output_key: str = "overlay",
        alpha: float = 0.4,
        cmap: str = "autumn",
        instances_key: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.output_key = output_key
        self.alpha = alpha
        self.cmap = cmap
        self.instances_key = instances_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key][:1]
            if self.instances_key is not None and self.instances_key in d:
                rgb = outline_objects(image[0].detach().cpu().numpy(), d[self.instances_key][0].detach().cpu().numpy())
                blended = torch.as_tensor(np.moveaxis(rgb, -1, 0), dtype=torch.float32)
            else:
                blended = blend_images(image, d[self.label_key][:1], alpha=self.alpha, cmap=self.cmap)
            if isinstance(image, MetaTensor):  # keep the file name and geometry for SaveImaged
                blended = MetaTensor(torch.as_tensor(blended), meta=dict(image.meta))
            d[self.output_key] = blended
        return d
