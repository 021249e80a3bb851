"""Objects from segmentations: training targets that separate touching objects, instance labels from probabilities
and per-object measurements (their scores against labels: :mod:`scripts.metrics`).

Conventions: an instance label image holds 0 for background and ``1..N``, one id per object; a binary mask is an
instance label image of connected components. Arrays are numpy, ``(*spatial)`` without a channel axis, 2D or 3D.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import graph
from skimage.color import label2rgb
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table
from skimage.morphology import h_maxima, h_minima
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

__all__ = [
    "as_instances",
    "object_targets",
    "contact_map",
    "star_distances",
    "ray_order",
    "STAR_SCALE",
    "CONTACT_WINDOWS",
    "instances_from_probabilities",
    "star_objects",
    "h_maxima_in_regions",
    "segments_from_boundaries",
    "components",
    "join_boundaries",
    "object_table",
    "outline_objects",
    "UnionFind",
    "OBJECT_COLUMNS",
]

OBJECT_COLUMNS = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "intensity_mean")


def as_instances(label: np.ndarray) -> np.ndarray:
    """An instance label image from ``label``: instance ids are kept (renumbered ``1..N``), a binary mask (at most one
    foreground value) becomes its connected components (full connectivity)."""
    label = np.asarray(label)
    values = np.unique(label)
    if values.size <= 2:
        return connected_components(label > 0).astype(np.int32)
    return relabel_sequential(np.round(label).astype(np.int64))[0].astype(np.int32)


# contact windows (DSB2018 topcoders, victor/create_masks.py): half-width in pixels of the neighbourhood that decides
# whether a pixel touches two objects, by the area of the object it lies in (below 300, below 2000, larger), and for
# background pixels in the gaps (objects up to 4000 pixels, larger)
CONTACT_WINDOWS = {"areas": (300, 2000), "object": (1, 2, 3), "gap_area": 4000, "gap": (3, 6)}


def contact_map(label: np.ndarray) -> np.ndarray:
    """The contact target of an instance label image: boolean ``(*spatial)``, True where a small neighbourhood of the
    pixel holds more than one object, within the gaps between nearby objects (the DSB2018 winners' design).

    The gaps are the watershed lines between the objects grown over their union dilated by 4 pixels and the pixels
    where two objects touch, widened by 3 pixels. A pixel inside the gaps is a contact when the box of half-width
    ``w`` around it holds two object ids,
    ``w`` 1, 2 or 3 pixels for objects of under 300, under 2000 or more pixels and 3 (6 where the largest object
    exceeds 4000 pixels) on the background (:data:`CONTACT_WINDOWS`). 2D or 3D; a binary mask is taken as its
    connected components (and has no contacts)."""
    return _contacts(as_instances(label))


def _contacts(instances: np.ndarray) -> np.ndarray:
    """:func:`contact_map` of an instance label image already numbered ``1..N`` (:func:`as_instances`)."""
    mask = instances > 0
    if int(instances.max()) < 2:
        return np.zeros(instances.shape, bool)
    ndim = instances.ndim
    highest = np.iinfo(np.int32).max
    ids_or_high = np.where(mask, instances, highest)

    def two_ids(width: int) -> np.ndarray:  # the box of half-width ``width`` holds two object ids
        size = 2 * int(width) + 1
        top = ndimage.maximum_filter(instances, size=size, mode="constant", cval=0)
        bottom = ndimage.minimum_filter(ids_or_high, size=size, mode="constant", cval=highest)
        return (bottom < highest) & (top != bottom)

    near = ndimage.binary_dilation(mask, structure=np.ones((9,) * ndim, bool))
    lines = near & (watershed(near, instances, mask=near, watershed_line=True) == 0)
    boxes = {1: two_ids(1)}
    touching = mask & boxes[1]  # objects in direct contact have no watershed line between them
    gaps = ndimage.binary_dilation(lines | touching, structure=np.ones((7,) * ndim, bool))
    areas = np.bincount(instances.ravel())
    area = areas[instances]
    small, medium = CONTACT_WINDOWS["areas"]
    w_object = np.select([area < small, area < medium], CONTACT_WINDOWS["object"][:2], CONTACT_WINDOWS["object"][2])
    w_gap = CONTACT_WINDOWS["gap"][int(areas[1:].max() > CONTACT_WINDOWS["gap_area"])]
    width = np.where(mask, w_object, w_gap)
    contact = np.zeros(instances.shape, bool)
    for w in np.unique(width[gaps]):
        contact |= gaps & (width == w) & (boxes[w] if w in boxes else two_ids(w))
    return contact


# star-convex objects (StarDist, Schmidt et al. 2018): the network's ray channels hold sigmoid(logit) = the distance
# from the pixel to its object's edge along the ray, divided by STAR_SCALE pixels (so that every output channel is a
# probability-like value in [0, 1] and the bundle's sigmoid post-processing, ensembles and blocks apply unchanged)
STAR_SCALE = 256.0


def _stardist() -> object:
    """The ``stardist`` package (its numba and C geometry; no TensorFlow), imported where star-convex objects are
    used, with a clear error where it is missing."""
    try:
        import stardist
    except ImportError as error:
        raise ImportError(
            "star-convex objects (--rays, --seeds star) need StarDist's geometry: pip install stardist "
            "(the project's [star] extra)"
        ) from error
    return stardist


def star_distances(label: np.ndarray, rays: int) -> np.ndarray:
    """The star-convex distances of a 2D instance label image: ``(rays, H, W)`` float32, for each object pixel the
    distance in pixels along ray ``k`` (angle ``2 pi k / rays``, direction ``(dy, dx) = (sin, cos)`` in (row,
    column) steps) to the edge before the first pixel that is not of its object (the background or a touching
    object), 0 outside objects (StarDist's ``star_dist``). A binary mask is taken as its connected components."""
    instances = as_instances(label)
    if instances.ndim != 2:
        raise ValueError(f"star-convex distances are 2D, got a label of shape {instances.shape}.")
    if int(instances.max()) > np.iinfo(np.uint16).max:
        raise ValueError(f"star-convex distances take at most 65535 objects a patch, got {int(instances.max())}.")
    return np.moveaxis(_stardist().star_dist(instances.astype(np.uint16), int(rays)), -1, 0)


def ray_order(rays: int, transposed: bool = False, flipped: tuple[int, ...] = ()) -> np.ndarray:
    """How the rays of :func:`star_distances` move under a symmetry of the image: ``order[k]`` is the ray of the
    transformed image (first ``transposed``, then flipped along the spatial axes ``flipped``, 0 = rows, 1 = columns)
    that points where ray ``k`` of the original points. ``rays`` must be a multiple of 4 for a transpose, of 2 for a
    flip."""
    if (transposed and rays % 4) or (flipped and rays % 2):
        raise ValueError(f"the symmetries of the square map rays onto rays only for a multiple of 4, got {rays}.")
    k = np.arange(rays)
    if transposed:  # (dy, dx) -> (dx, dy): angle phi -> pi / 2 - phi
        k = (rays // 4 - k) % rays
    if 0 in flipped:  # dy -> -dy: phi -> -phi
        k = (-k) % rays
    if 1 in flipped:  # dx -> -dx: phi -> pi - phi
        k = (rays // 2 - k) % rays
    return k


def object_targets(label: np.ndarray, contact: bool = False, rays: int = 0) -> np.ndarray:
    """The training targets of an instance label image: ``(2, *spatial)`` float32 (``(3, *spatial)`` with
    ``contact``, ``(2 + rays, *spatial)`` with ``rays``) with channel 0 the object mask (0/1), channel 1 the centre
    map: each object's distance to its own border (Euclidean, so touching objects meet at 0) divided by its largest
    value, 1 at the object's centre, 0 outside (StarDist's object probability), channel 2 the contact map of
    :func:`contact_map` (0/1), or channels ``2..`` the star-convex distances of :func:`star_distances` divided by
    :data:`STAR_SCALE` (clipped to 1). A binary mask is taken as its connected components."""
    if contact and rays:
        raise ValueError("object targets hold a contact map or star-convex distances, not both.")
    instances = as_instances(label)
    mask = instances > 0
    n = int(instances.max())
    channels = 2 + int(bool(contact)) + int(rays)
    if n == 0:
        return np.zeros((channels, *instances.shape), np.float32)
    inner = mask & ~find_boundaries(instances, mode="inner")  # each object minus its own outermost pixels
    distance = ndimage.distance_transform_edt(inner) + mask  # 1 on the border, growing inwards
    peak = np.asarray(ndimage.maximum(distance, instances, np.arange(1, n + 1)), dtype=np.float64)
    centre = np.where(mask, distance / peak[np.maximum(instances, 1) - 1], 0.0)
    targets = [mask, centre] + ([_contacts(instances)] if contact else [])
    if rays:
        targets += list(np.minimum(star_distances(instances, rays) / STAR_SCALE, 1.0))
    return np.stack(targets).astype(np.float32)


def instances_from_probabilities(
    mask_prob: np.ndarray,
    centre_prob: np.ndarray | None = None,
    threshold: float = 0.5,
    seeds: str = "centre",
    h: float = 0.1,
    sigma: float = 1.0,
    min_size: int = 0,
    centre_weight: float = 8.0,
    contact_prob: np.ndarray | None = None,
    seed_threshold: float = 0.5,
    min_seed_size: int = 4,
    distances: np.ndarray | None = None,
    nms_threshold: float = 0.4,
) -> np.ndarray:
    """Instance labels (int32, ``0`` background, ``1..N``) from the object probability and the predicted centre map
    (and contact map).

    The foreground is ``mask_prob >= threshold`` (the binary mask the bundle writes).

    ``seeds="contact"`` (the DSB2018 winners' design; needs ``contact_prob``): the body ``mask_prob * (1 -
    contact_prob)`` is above ``seed_threshold`` inside nuclei and low where they touch; its connected regions (full
    connectivity) of at least ``min_seed_size`` pixels seed a watershed of the negated body over the foreground.

    ``seeds="star"`` (StarDist's design; needs ``centre_prob`` and ``distances``, the ``(rays, *spatial)`` distances
    in pixels of :func:`star_distances`): the star-convex polygons of :func:`star_objects` (candidates where the
    centre map exceeds ``seed_threshold``, overlaps above ``nms_threshold`` suppressed) seed, where they lie in the
    foreground, a watershed of the negated centre map over the foreground, so that the objects' pixels are the mask's
    and the polygons only decide which object a pixel belongs to.

    Otherwise a landscape that peaks once per object, smoothed by a Gaussian of ``sigma`` pixels, is ``centre_prob``
    (``seeds="centre"``, the network's centre map), the foreground's Euclidean distance transform
    (``seeds="distance"``, the classic split of round touching objects) or their sum, the distance plus
    ``centre_weight`` pixels times the centre map (``seeds="both"``). Its regional maxima of height at least ``h``
    within each connected region of the foreground (:func:`h_maxima_in_regions`; 0.1 suits the centre map, 1-2
    pixels the distance) seed a watershed of the negated landscape over the foreground.

    Foreground regions without a seed become objects of their own. Objects under ``min_size`` pixels are dropped
    (``0`` keeps every one, so the union of the instances is exactly the mask). Without ``centre_prob`` (``"centre"``,
    ``"both"``) or ``contact_prob`` (``"contact"``) it gives the foreground's connected components.
    """
    if seeds not in ("centre", "distance", "both", "contact", "star"):
        raise ValueError(f"seeds must be 'centre', 'distance', 'both', 'contact' or 'star', got {seeds!r}.")
    foreground = np.asarray(mask_prob) >= threshold
    star = None if centre_prob is None else distances
    needed = {"centre": centre_prob, "both": centre_prob, "contact": contact_prob, "star": star}.get(seeds, foreground)
    if not foreground.any() or needed is None:
        return _drop_small(connected_components(foreground).astype(np.int32), min_size)
    if seeds == "contact":
        landscape = np.asarray(mask_prob, dtype=np.float32) * (1 - np.asarray(contact_prob, dtype=np.float32))
    elif seeds in ("centre", "star"):
        landscape = np.asarray(centre_prob, dtype=np.float32)
    else:
        landscape = ndimage.distance_transform_edt(foreground).astype(np.float32)
        if seeds == "both":
            landscape += float(centre_weight) * np.asarray(centre_prob, dtype=np.float32)
    if sigma > 0:
        landscape = ndimage.gaussian_filter(landscape, sigma)
    if seeds == "contact":
        markers = _drop_small(connected_components(foreground & (landscape > seed_threshold)), min_seed_size)
    elif seeds == "star":
        polygons = star_objects(centre_prob, distances, seed_threshold, nms_threshold)
        markers = np.where(foreground, polygons, 0)
    else:
        # a region under min_size pixels ends as objects under min_size, dropped whether seeded or not: skipping
        # it changes no output and spares the per-region maxima the specks of a noisy (e.g. untrained) network
        regions = _drop_small(connected_components(foreground), min_size)
        markers = connected_components(h_maxima_in_regions(landscape, h, regions))
    return grow_seeds(-landscape, markers, foreground, min_size)


def grow_seeds(landscape: np.ndarray, markers: np.ndarray, mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Instance labels (int32, ``0`` background, ``1..N``): the seeds ``markers`` (labels) grown over ``mask`` by a
    watershed of ``landscape`` (lowest first), each region of ``mask`` that no seed reaches an object of its own,
    objects under ``min_size`` pixels dropped."""
    instances = watershed(landscape, markers=markers, mask=mask)
    rest = connected_components(mask & (instances == 0))
    return _drop_small(np.where(rest > 0, rest + instances.max(), instances), min_size)


def star_objects(
    centre_prob: np.ndarray, distances: np.ndarray, prob_threshold: float = 0.5, nms_threshold: float = 0.4
) -> np.ndarray:
    """Star-convex objects (StarDist): instance labels (int32, ``0`` background) of the polygons whose centre
    pixel's probability ``centre_prob`` ``(H, W)`` exceeds ``prob_threshold``, each with the ray lengths
    ``distances`` ``(rays, H, W)`` in pixels (:func:`star_distances`), kept from the most probable down unless
    a kept polygon overlaps it by more than ``nms_threshold`` (intersection over the smaller area; StarDist's
    ``non_maximum_suppression`` and ``polygons_to_label``, which paints the most probable polygon last)."""
    prob = np.asarray(centre_prob, dtype=np.float32)
    if prob.ndim != 2 or distances.shape[1:] != prob.shape:
        raise ValueError(f"star_objects: centre map {prob.shape} and distances {distances.shape} do not match.")
    if not (prob > prob_threshold).any():
        return np.zeros(prob.shape, np.int32)
    dist = np.ascontiguousarray(np.moveaxis(np.asarray(distances, dtype=np.float32), 0, -1))
    stardist = _stardist()
    points, probs, dists = stardist.non_maximum_suppression(
        dist, prob, prob_thresh=prob_threshold, nms_thresh=nms_threshold
    )
    return stardist.polygons_to_label(dists, points, prob.shape, prob=probs).astype(np.int32)


def h_maxima_in_regions(landscape: np.ndarray, h: float, regions: np.ndarray) -> np.ndarray:
    """The regional maxima of height at least ``h`` of ``landscape`` within each region of ``regions`` (an instance
    label image, ``0`` outside every region), as a boolean array of ``landscape``'s shape.

    scikit-image's ``h_maxima`` of each region's bounding box, padded by one pixel, with the pixels outside the
    region set below it, so that a region's highest plateau is always a maximum (a seed for every region): no
    path through the background joins two regions, so a region's maxima do not depend on its neighbours, and the
    morphological reconstruction sorts the regions' pixels instead of the whole image's (the nuclei of the 60 DSB2018
    validation images: 3.2 -> 2.1 s in all, the same instances in 57 of them, DSB2018 score 0.48984 -> 0.48985).
    """
    landscape = np.asarray(landscape)
    maxima = np.zeros(landscape.shape, dtype=bool)
    for i, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        inside = regions[box] == i
        crop = landscape[box]
        low = crop[inside].min() - 2 * h  # a border below the region: its highest plateau is a maximum of height 2h
        lowered = np.pad(np.where(inside, crop, low), 1, constant_values=low).astype(landscape.dtype)
        maxima[box] |= h_maxima(lowered, h)[(slice(1, -1),) * lowered.ndim].astype(bool) & inside
    return maxima


def _drop_small(instances: np.ndarray, min_size: int) -> np.ndarray:
    """``instances`` without the objects under ``min_size`` pixels, renumbered ``1..N`` (int32)."""
    if min_size > 0:
        small = np.bincount(instances.ravel()) < min_size
        small[0] = False
        instances[small[instances]] = 0
    return relabel_sequential(instances)[0].astype(np.int32)


def _mean_boundary_weight(rag: graph.RAG, src: int, dst: int, n: int) -> dict:
    """``merge_hierarchical`` weight of the edge to ``n`` of the region merged from ``src`` and ``dst``: the mean
    boundary probability over both edges' pixels (scikit-image's boundary-RAG example)."""
    default = {"weight": 0.0, "count": 0}
    a, b = rag[src].get(n, default), rag[dst].get(n, default)
    count = a["count"] + b["count"]
    return {"count": count, "weight": (a["count"] * a["weight"] + b["count"] * b["weight"]) / count}


def _keep_merged(rag: graph.RAG, src: int, dst: int) -> None:
    """``merge_hierarchical`` merge callback: the boundary RAG needs no node data."""


def _absorb_small(regions: np.ndarray, landscape: np.ndarray, min_size: int) -> np.ndarray:
    """``regions`` (ids ``1..N`` covering the section) with the regions under ``min_size`` pixels flooded by their
    neighbours over ``landscape`` (a watershed seeded by the kept regions), so that no pixel is left unlabelled."""
    sizes = np.bincount(regions.ravel())
    kept = np.where(sizes[regions] >= min_size, regions, 0)
    if not kept.any() or kept.all():
        return regions
    return relabel_sequential(watershed(landscape, markers=kept))[0]


def _segments_2d(
    boundary_prob: np.ndarray, sigma: float, h: float, merge_threshold: float, min_size: int = 0
) -> np.ndarray:
    boundary_prob = np.round(boundary_prob * 255) / 255  # 256 levels, as <stem>_prob.png holds them
    landscape = ndimage.gaussian_filter(boundary_prob, sigma) if sigma > 0 else boundary_prob
    regions = watershed(landscape, markers=connected_components(h_minima(landscape, h).astype(bool)))
    if merge_threshold > 0 and regions.max() > 1:
        rag = graph.rag_boundary(regions, boundary_prob)
        regions = graph.merge_hierarchical(
            regions,
            rag,
            thresh=merge_threshold,
            rag_copy=False,
            in_place_merge=True,
            merge_func=_keep_merged,
            weight_func=_mean_boundary_weight,
        )
        regions = relabel_sequential(regions + 1)[0]
    if min_size > 0:
        regions = _absorb_small(regions, landscape, min_size)
    lines = np.zeros(regions.shape, bool)  # one-pixel lines where a region meets the next one along an axis
    for axis in range(regions.ndim):
        front = [slice(None)] * regions.ndim
        back = [slice(None)] * regions.ndim
        front[axis], back[axis] = slice(1, None), slice(None, -1)
        lines[tuple(back)] |= regions[tuple(back)] != regions[tuple(front)]
    return np.where(lines, 0, regions)


def segments_from_boundaries(
    boundary_prob: np.ndarray, sigma: float = 1.0, h: float = 0.05, merge_threshold: float = 0.7, min_size: int = 0
) -> np.ndarray:
    """Neuron profiles of EM sections from a membrane (boundary) probability map: int32 ids ``1..N``, one per region
    between membranes, ``0`` on the one-pixel lines kept between regions.

    ``boundary_prob`` is ``(H, W)`` (one section) or ``(H, W, D)`` (a stack of sections along the last axis, each
    segmented in 2D, ids unique across sections). Per section: the probability smoothed by a Gaussian of ``sigma``
    pixels is flooded (scikit-image's ``watershed``) from its regional minima of depth at least ``h``
    (``h_minima``), which over-segments; then neighbouring regions whose shared boundary has a mean (unsmoothed)
    probability below ``merge_threshold`` are merged, weakest boundary first (``graph.rag_boundary`` and
    ``merge_hierarchical``; ``0`` merges nothing); last, segments under ``min_size`` pixels are flooded by their
    neighbours over the smoothed probability (``0`` keeps them). The probability is first rounded to 256 levels (as
    ``<stem>_prob.png`` stores it): in float, minima at the noise level seed fragments inside the membranes that
    no boundary merge removes (ISBI 2012 slices 20-24: V_rand 0.963 in float against 0.977 rounded, with the
    parameters chosen on the training slices' rounded probabilities).
    """
    prob = np.asarray(boundary_prob, dtype=np.float32)
    if prob.ndim == 2:
        return _segments_2d(prob, sigma, h, merge_threshold, min_size).astype(np.int32)
    if prob.ndim != 3:
        raise ValueError(f"segments_from_boundaries: expected (H, W) or (H, W, D), got shape {prob.shape}.")
    out = np.zeros(prob.shape, np.int32)
    offset = 0
    for z in range(prob.shape[-1]):
        section = _segments_2d(prob[..., z], sigma, h, merge_threshold, min_size)
        out[..., z] = np.where(section > 0, section + offset, 0)
        offset += int(section.max())
    return out


def erode_in_plane(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` (``(X, Y)`` or ``(X, Y, Z)``) eroded by a square of side ``2 * pixels + 1`` in the plane of its first
    two axes, not across sections; the array's edge does not erode (outside counts as foreground)."""
    mask = np.asarray(mask) > 0
    if pixels <= 0:
        return mask
    shape = (2 * pixels + 1, 2 * pixels + 1) + (1,) * (mask.ndim - 2)
    return ndimage.binary_erosion(mask, structure=np.ones(shape, bool), border_value=1)


def components(mask: np.ndarray, min_size: int = 0, erode: int = 0) -> np.ndarray:
    """Objects of a binary mask (2D or 3D): its connected components (full connectivity, as :func:`as_instances`
    takes a binary label), each then thinned by ``erode`` pixels in plane (:func:`erode_in_plane`; an object keeps
    its id where erosion cuts it), those under ``min_size`` pixels (voxels) dropped; int32 ids ``1..N``."""
    mask = np.asarray(mask) > 0
    objects = connected_components(mask)
    if erode > 0:
        objects = np.where(erode_in_plane(mask, erode), objects, 0)
    return _drop_small(objects, min_size)


def join_boundaries(segments: np.ndarray) -> np.ndarray:
    """``segments`` with every ``0`` pixel given the id of its nearest segment (Euclidean), as the ISBI 2012
    challenge's evaluation thins predicted boundaries into the regions; unchanged without any ``0`` or any segment."""
    segments = np.asarray(segments)
    zero = segments == 0
    if not zero.any() or zero.all():
        return segments
    nearest = ndimage.distance_transform_edt(zero, return_distances=False, return_indices=True)
    return segments[tuple(nearest)]


def object_table(instances: np.ndarray, image: np.ndarray | None = None, spacing: tuple | None = None) -> dict:
    """One row per object of an instance label image, by scikit-image's ``regionprops_table``: ``id``, ``area``
    (pixels or voxels), ``centroid-k`` and ``bbox-k`` (array axes, in pixels), ``equivalent_diameter``, and
    ``mean_intensity`` of ``image`` when given; with ``spacing`` also ``volume`` (area times the voxel size). Columns
    are numpy arrays (empty for an image without objects)."""
    instances = np.asarray(instances).astype(np.int32)
    properties = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
    if image is not None:
        properties.append("intensity_mean")
    table = regionprops_table(instances, intensity_image=image, properties=properties)
    if not instances.any():  # regionprops_table gives no columns for an empty image: the same names, no rows
        ndim = instances.ndim
        table = {"label": [], "area": []}
        table.update({f"centroid-{i}": [] for i in range(ndim)})
        table.update({f"bbox-{i}": [] for i in range(2 * ndim)})
        table["equivalent_diameter_area"] = []
        if image is not None:
            table["intensity_mean"] = []
        table = {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}
    renames = {"label": "id", "equivalent_diameter_area": "equivalent_diameter", "intensity_mean": "mean_intensity"}
    table = {renames.get(k, k): v for k, v in table.items()}
    if spacing is not None:
        table["volume"] = np.asarray(table["area"], dtype=np.float64) * float(np.prod(spacing))
    return table


def outline_objects(image: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """``(*spatial, 3)`` RGB in [0, 1]: the gray ``image`` (rescaled to [0, 1]) with each object's outline (its own
    outermost pixels) in its own colour, cycling through scikit-image's label colours."""
    image = np.asarray(image, dtype=np.float64)
    gray = (image - image.min()) / max(float(image.max() - image.min()), 1e-8)
    ids = np.asarray(instances).astype(np.int64)
    outlines = np.where(find_boundaries(ids, mode="inner"), ids, 0)
    return np.where((outlines > 0)[..., None], label2rgb(outlines, bg_label=0), gray[..., None])


class UnionFind:
    """Union-find over object ids: joins the pieces of objects that block borders cut (:mod:`scripts.blocks`)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(a, a) != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
