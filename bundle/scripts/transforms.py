"""Transforms that MONAI lacks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.visualize import blend_images

__all__ = ["Overlayd"]


class Overlayd(MapTransform):
    """Blend a segmentation over its image for viewing: writes ``d[output_key]`` = ``(3, *spatial)`` RGB in [0, 1].

    ``keys``: the image key (``(1, *spatial)``, any intensity range, rescaled to [0, 1]);
    ``label_key``: the binary segmentation ``(1, *spatial)``, drawn in colour with ``alpha`` opacity.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "pred",
        output_key: str = "overlay",
        alpha: float = 0.4,
        cmap: str = "autumn",
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.output_key = output_key
        self.alpha = alpha
        self.cmap = cmap

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key][:1]
            blended = blend_images(image, d[self.label_key][:1], alpha=self.alpha, cmap=self.cmap)
            if isinstance(image, MetaTensor):  # keep the file name and geometry for SaveImaged
                blended = MetaTensor(blended, meta=dict(image.meta))
            d[self.output_key] = blended
        return d
