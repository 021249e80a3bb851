"""Transforms that MONAI lacks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, RandomizableTransform
from monai.visualize import blend_images

from scripts import as_bool
from scripts.instances import (
    STAR_SCALE,
    components,
    instances_from_probabilities,
    object_targets,
    outline_objects,
    segments_from_boundaries,
)

__all__ = [
    "Overlayd",
    "LabelTargetsd",
    "has_object_targets",
    "Instancesd",
    "RandStainGrayd",
    "LUMINANCE",
    "instance_transform",
    "auto_seeds",
]

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's "L" conversion


def _as_meta(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a float32 tensor with the metadata (file name, geometry) of ``like``, on its device."""
    tensor = torch.as_tensor(array, dtype=torch.float32, device=like.device)
    return MetaTensor(tensor, meta=dict(like.meta)) if isinstance(like, MetaTensor) else tensor


def has_object_targets(objects: bool | str, method: str = "nuclei") -> bool:
    """Whether :class:`LabelTargetsd` with ``objects`` and ``method`` adds object channels (centre map, contact map,
    star-convex distances) after the mask: only for nuclei objects."""
    return as_bool(objects) and method == "nuclei"


class LabelTargetsd(MapTransform):
    """The training target of a label ``(1, *spatial)`` (instance ids, or a mask with foreground > 0.5).

    ``objects=False``, or an instance ``method`` other than ``"nuclei"`` (see :class:`Instancesd`: EM neurons and
    mitochondria train on the mask alone): the binary mask ``(1, *spatial)``. ``objects=True`` with ``"nuclei"``:
    ``(2, *spatial)``, the object mask and the centre map of :func:`scripts.instances.object_targets` (a mask is
    taken as its connected components); with ``contact``, ``(3, *spatial)``: the contact map as channel 2; with
    ``rays`` (2D), ``(2 + rays, *spatial)``: the star-convex distances as channels ``2..``.
    ``instances_key``: also keep the instance ids ``(1, *spatial)`` under that key (for object scores).
    """

    def __init__(
        self,
        keys: KeysCollection,
        objects: bool | str = True,
        instances_key: str | None = None,
        method: str = "nuclei",
        contact: bool | str = False,
        rays: int = 0,
    ) -> None:
        super().__init__(keys)
        self.objects = has_object_targets(objects, method)
        self.contact = as_bool(contact)
        self.rays = int(rays)
        self.instances_key = instances_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if self.instances_key is not None:
                d[self.instances_key] = label.clone()
            if self.objects:
                d[key] = _as_meta(object_targets(label[0].detach().cpu().numpy(), self.contact, self.rays), label)
            else:
                d[key] = (label >= 0.5).to(torch.float32)
        return d


class Instancesd(MapTransform):
    """Objects from the network's probabilities under ``keys``, written to ``d[instances_key]`` as instance ids
    ``(1, *spatial)`` (0 background), by ``method``:

    - ``"nuclei"``: probabilities ``(2, *spatial)`` (object mask, centre map) or ``(3, *spatial)`` (and contact
      map), seeded watershed (:func:`scripts.instances.instances_from_probabilities` with ``seeds``, ``h``,
      ``sigma``, ``seed_threshold``); with ``seeds="star"``, ``(2 + rays, *spatial)`` (object mask, centre map,
      star-convex distances over :data:`scripts.instances.STAR_SCALE`, ``nms_threshold``); ``seeds="auto"`` picks
      them by the channels (:func:`auto_seeds`); ``keys`` keeps only the mask channel;
    - ``"neurons"``: a membrane probability ``(1, H, W[, D])``, one id per region between membranes, section by
      section along the last axis (:func:`scripts.instances.segments_from_boundaries` with ``sigma``, ``h``,
      ``merge_threshold``); ``keys`` unchanged;
    - ``"components"``: a probability ``(1, *spatial)``, the connected components (2D or 3D) of ``>= threshold``
      eroded by ``erode`` pixels in plane (:func:`scripts.instances.components` with ``min_size``, ``erode``).

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
        seed_threshold: float = 0.5,
        erode: int = 0,
        nms_threshold: float = 0.4,
    ) -> None:
        super().__init__(keys)
        if method not in self.METHODS:
            raise ValueError(f"Instancesd: method must be one of {self.METHODS}, got {method!r}.")
        self.instances_key = instances_key
        self.method = method
        self.params = {"threshold": threshold, "seeds": seeds, "h": h, "sigma": sigma, "min_size": min_size}
        self.params.update(centre_weight=centre_weight, seed_threshold=seed_threshold, nms_threshold=nms_threshold)
        self.merge_threshold = merge_threshold
        self.erode = int(erode) if method == "components" else 0  # pixels of context the objects need around them

    def _instances(self, key: Hashable, p: np.ndarray) -> np.ndarray:
        if self.method != "nuclei":
            return self._other(key, p)
        seeds = self.params["seeds"]
        return self._nuclei(key, p, auto_seeds(p.shape[0]) if seeds == "auto" else seeds)

    def _nuclei(self, key: Hashable, p: np.ndarray, seeds: str) -> np.ndarray:
        params = {**self.params, "seeds": seeds}
        if seeds == "contact":
            needs, ok = "3 channels (object mask, centre map, contact map)", p.shape[0] == 3
        elif seeds == "star":
            needs, ok = "2 + rays channels (object mask, centre map, rays >= 4 distances)", p.shape[0] >= 6
        else:
            needs, ok = "2 or 3 channels (object mask, centre map[, contact map])", p.shape[0] in (2, 3)
        if not ok:
            raise ValueError(f"Instancesd ({self.method}, seeds {seeds!r}): {key!r} needs {needs}, got {p.shape[0]}.")
        if seeds == "star":
            return instances_from_probabilities(p[0], p[1], distances=p[2:] * STAR_SCALE, **params)
        contact = p[2] if p.shape[0] == 3 else None
        return instances_from_probabilities(p[0], p[1], contact_prob=contact, **params)

    def _other(self, key: Hashable, p: np.ndarray) -> np.ndarray:
        if p.shape[0] != 1:
            raise ValueError(f"Instancesd ({self.method}): {key!r} needs 1 channel, got {p.shape[0]}.")
        if self.method == "neurons":
            h, sigma = self.params["h"], self.params["sigma"]
            min_size = self.params["min_size"]
            return segments_from_boundaries(p[0], sigma, h, merge_threshold=self.merge_threshold, min_size=min_size)
        return components(p[0] >= self.params["threshold"], min_size=self.params["min_size"], erode=self.erode)

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


def auto_seeds(channels: int) -> str:
    """``seeds="auto"``: the seeds a nuclei network's ``channels`` outputs call for: ``"contact"`` for 3 (object mask,
    centre map, contact map), ``"star"`` for 6 or more (star-convex distances after the mask and centre map), else
    ``"both"`` (distance to the mask's edge plus the centre map)."""
    return "contact" if channels == 3 else "star" if channels >= 6 else "both"


def instance_transform(postprocessing: Compose) -> Instancesd | None:
    """The :class:`Instancesd` of a preset's ``postprocessing`` (``None`` where ``--objects false`` disabled it), so
    that other configs refer to it by name rather than by its position in the list."""
    return next((t for t in postprocessing.transforms if isinstance(t, Instancesd)), None)


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


class RandStainGrayd(RandomizableTransform, MapTransform):
    """Colour and stain augmentation of an RGB or gray image, ending in one gray channel: ``(C, *spatial)`` with
    ``C`` 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped), intensities in any range -> ``(1, *spatial)`` float32.

    On colour images (channels that differ, as H&E and stained brightfield): with probability ``stain_prob`` the
    stains are jittered in haematoxylin-eosin-DAB space (scikit-image's ``rgb2hed``/``hed2rgb`` of the image scaled
    to [0, 1]; each stain's density scaled by ``U(1 - stain_scale, 1 + stain_scale)`` and shifted by
    ``U(-stain_shift, stain_shift)``, Tellez et al. 2018), and with probability ``weights_prob`` the gray
    conversion uses random channel weights (each of :data:`LUMINANCE` times ``U(0.5, 1.5)``, summing to 1) instead
    of the luminance. Then, on every image, with probability ``invert_prob`` the gray image is inverted within its
    range (``min + max - x``): dark nuclei on a light background look like fluorescence and the reverse. With all
    probabilities 0 it is the deterministic luminance conversion of the inference reader.
    """

    def __init__(
        self,
        keys: KeysCollection,
        stain_prob: float = 0.5,
        stain_scale: float = 0.2,
        stain_shift: float = 0.05,
        weights_prob: float = 0.3,
        invert_prob: float = 0.2,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.stain_prob, self.stain_scale, self.stain_shift = stain_prob, stain_scale, stain_shift
        self.weights_prob, self.invert_prob = weights_prob, invert_prob

    def _gray(self, rgb: np.ndarray) -> np.ndarray:
        """``(3, *spatial)`` -> ``(*spatial)`` float32, with the random stain and weights of this call."""
        rgb = rgb.astype(np.float32)
        if np.any(rgb[0] != rgb[1]) or np.any(rgb[1] != rgb[2]):  # colour (a gray image stored as RGB is not)
            if self.R.rand() < self.stain_prob:
                from skimage.color import hed2rgb, rgb2hed

                top = 255.0 if rgb.max() > 1 else 1.0
                hed = rgb2hed(np.clip(np.moveaxis(rgb, 0, -1) / top, 0, 1))
                scale = self.R.uniform(1 - self.stain_scale, 1 + self.stain_scale, 3)
                shift = self.R.uniform(-self.stain_shift, self.stain_shift, 3)
                rgb = np.moveaxis(np.clip(hed2rgb(hed * scale + shift), 0, 1), -1, 0).astype(np.float32) * top
            weights = np.asarray(LUMINANCE, np.float32)
            if self.R.rand() < self.weights_prob:
                weights = weights * self.R.uniform(0.5, 1.5, 3).astype(np.float32)
                weights /= weights.sum()
            return np.tensordot(weights, rgb, axes=1)
        return rgb[0]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            if array.shape[0] not in (1, 3, 4):
                raise ValueError(
                    f"RandStainGrayd: {key!r} needs 1, 3 or 4 channels (gray, RGB, RGBA), got {array.shape[0]}."
                )
            gray = self._gray(array[:3]) if array.shape[0] >= 3 else array[0].astype(np.float32)
            if self.R.rand() < self.invert_prob:
                gray = gray.min() + gray.max() - gray
            d[key] = _as_meta(gray[None], image) if isinstance(image, torch.Tensor) else gray[None]
        return d
