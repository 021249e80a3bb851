"""The dock widget: choose an image layer and a preset, press Segment; the bundle runs in a worker thread (the
viewer stays responsive, a progress bar runs) and its mask and objects come back as Labels layers, the objects
table as the instances layer's features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, create_widget
from napari.qt.threading import FunctionWorker, create_worker

from napari_r2attunet.segment import Segmentation, bundle_dir, presets, segment

if TYPE_CHECKING:
    from napari.layers import Image

__all__ = ["SegmentWidget", "add_segmentation"]


def add_segmentation(viewer: napari.Viewer, layer: Image, result: Segmentation, preset: str) -> list[Any]:
    """Add ``result`` of ``layer`` to ``viewer``: ``<layer> mask`` (0/1) and, for presets that make objects,
    ``<layer> objects`` (instance ids, the objects table as features, one row per id), both in the layer's world
    coordinates. Returns the new layers."""
    where = {"scale": layer.scale[-result.mask.ndim :], "translate": layer.translate[-result.mask.ndim :]}
    added = [viewer.add_labels(result.mask, name=f"{layer.name} mask ({preset})", opacity=0.4, **where)]
    if result.instances is not None:
        features = dict(result.objects)
        if "id" in features:
            features = {"index": features["id"], **features}  # napari matches feature rows to label values by index
        added.append(
            viewer.add_labels(result.instances, name=f"{layer.name} objects ({preset})", features=features, **where)
        )
    return added


class SegmentWidget(Container):
    """Image layer, preset, bundle folder, a Segment button, a progress bar and a status line."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        root = bundle_dir()
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.preset = ComboBox(label="preset", choices=presets(root), value="nuclei")
        self.bundle = FileEdit(label="bundle", mode="d", value=root)
        self.button = PushButton(text="Segment")
        self.progress = ProgressBar(label="", min=0, max=1, value=0, visible=False)
        self.status = Label(value="")
        self.extend([self.image, self.preset, self.bundle, self.button, self.progress, self.status])
        self.button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self.worker: FunctionWorker | None = None

    def run(self) -> FunctionWorker | None:
        """Start segmenting the chosen layer in a worker thread; returns the worker (``None`` without a layer)."""
        layer = self.image.value
        if layer is None:
            self.status.value = "choose an image layer first"
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        image, preset, bundle = np.asarray(data), self.preset.value, str(self.bundle.value)
        self.button.enabled = False
        self.progress.visible, self.progress.max = True, 0  # max 0: busy indicator
        self.status.value = f"segmenting {layer.name} with {preset} ..."
        worker = create_worker(
            segment,
            image,
            preset,
            bundle,
            _start_thread=False,
            _ignore_errors=True,  # shown in the status line, not raised into the viewer
            _progress={"total": 0, "desc": f"R2AttU-Net {preset}"},  # napari's activity dock, busy
            _connect={
                "returned": lambda result: self._done(layer, result, preset),
                "errored": self._failed,
                "finished": self._finished,
            },
        )
        self.worker = worker
        worker.start()
        return worker

    def _done(self, layer: Image, result: Segmentation, preset: str) -> None:
        add_segmentation(self.viewer, layer, result, preset)
        count = 0 if result.instances is None else int(result.instances.max(initial=0))
        self.status.value = f"{layer.name}: {count} objects" if result.instances is not None else f"{layer.name}: mask"

    def _failed(self, error: Exception) -> None:
        self.status.value = f"error: {error}"

    def _finished(self) -> None:
        self.button.enabled = True
        self.progress.visible, self.progress.max = False, 1
