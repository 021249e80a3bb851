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
from scripts.instances import (
    components,
    instances_from_probabilities,
    object_targets,
    outline_objects,
    segments_from_boundaries,
)

__all__ = ["Overlayd", "LabelTargetsd", "Instancesd"]


def _as_meta(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a float32 tensor with the metadata (file name, geometry) of ``like``, on its device."""
    tensor = torch.as_tensor(array, dtype=torch.float32, device=like.device)
    return MetaTensor(tensor, meta=dict(like.meta)) if isinstance(like, MetaTensor) else tensor


class LabelTargetsd(MapTransform):
    """The training target of a label ``(1, *spatial)`` (instance ids, or a mask with foreground > 0.5).

    ``objects=False``, or an instance ``method`` other than ``"nuclei"`` (see :class:`Instancesd`: EM neurons and
    mitochondria train on the mask alone): the binary mask ``(1, *spatial)``. ``objects=True`` with ``"nuclei"``:
    ``(2, *spatial)``, the object mask and the centre map of :func:`scripts.instances.object_targets` (a mask is
    taken as its connected components).
    ``instances_key``: also keep the instance ids ``(1, *spatial)`` under that key (for object scores).
    """

    def __init__(
        self,
        keys: KeysCollection,
        objects: bool | str = True,
        instances_key: str | None = None,
        method: str = "nuclei",
    ) -> None:
        super().__init__(keys)
        self.objects = as_bool(objects) and method == "nuclei"
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
    """Objects from the network's probabilities under ``keys``, written to ``d[instances_key]`` as instance ids
    ``(1, *spatial)`` (0 background), by ``method``:

    - ``"nuclei"``: probabilities ``(2, *spatial)`` (object mask, centre map), seeded watershed
      (:func:`scripts.instances.instances_from_probabilities`); ``keys`` keeps only the mask channel;
    - ``"neurons"``: a membrane probability ``(1, H, W[, D])``, one id per region between membranes, section by
      section along the last axis (:func:`scripts.instances.segments_from_boundaries` with ``sigma``, ``h``,
      ``merge_threshold``); ``keys`` unchanged;
    - ``"components"``: a probability ``(1, *spatial)``, the connected components (2D or 3D) of ``>= threshold``
      (:func:`scripts.instances.components` with ``min_size``).

    With ``"nuclei"`` and ``"components"`` the pixels of objects under ``min_size`` leave the mask (probability 0),
    so that the mask is the union of the instances and the other probabilities are unchanged.
    """

    METHODS = ("nuclei", "neurons", "components")

    def __init__(
        self,
        keys: KeysCollection,
        instances_key: str = "instances",
        method: str = "nuclei",
        threshold: float = 0.5,
        seeds: str = "centre",
        h: float = 0.1,
        sigma: float = 1.0,
        min_size: int = 0,
        centre_weight: float = 8.0,
        merge_threshold: float = 0.7,
    ) -> None:
        super().__init__(keys)
        if method not in self.METHODS:
            raise ValueError(f"Instancesd: method must be one of {self.METHODS}, got {method!r}.")
        self.instances_key = instances_key
        self.method = method
        self.params = {"threshold": threshold, "seeds": seeds, "h": h, "sigma": sigma, "min_size": min_size}
        self.params["centre_weight"] = centre_weight
        self.merge_threshold = merge_threshold

    def _instances(self, key: Hashable, p: np.ndarray) -> np.ndarray:
        expected = 2 if self.method == "nuclei" else 1
        if p.shape[0] != expected:
            raise ValueError(
                f"Instancesd ({self.method}): {key!r} needs {expected} channel(s), got {p.shape[0]}"
                + (" (object mask, centre map)." if expected == 2 else ".")
            )
        if self.method == "nuclei":
            return instances_from_probabilities(p[0], p[1], **self.params)
        if self.method == "neurons":
            h, sigma = self.params["h"], self.params["sigma"]
            return segments_from_boundaries(p[0], sigma=sigma, h=h, merge_threshold=self.merge_threshold)
        return components(p[0] >= self.params["threshold"], min_size=self.params["min_size"])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            p = prob.detach().float().cpu().numpy()
            instances = self._instances(key, p)
            d[self.instances_key] = _as_meta(instances[None], prob)
            if self.method == "neurons":
                continue
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
