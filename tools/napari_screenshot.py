"""Screenshot of the napari plugin at work, for the docs, taken headless.

``xvfb-run -a python -m tools.napari_screenshot --out bundle/docs/figures/napari_widget.png [--image ID]``
(from the repository root, with the napari extra) opens a viewer, adds a shipped sample image, docks the plugin's
widget, segments the image with the nuclei preset and saves the whole window (widget, layer list and canvas)."""

from __future__ import annotations

import sys
from pathlib import Path

import fire
import numpy as np
from PIL import Image

from tools import BUNDLE

__all__ = ["screenshot"]

PLUGIN = "r2attunet-microscopy-bundle"
IMAGE = "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64"  # fluorescence, 256x320, validation split


def screenshot(out: str, image: str = IMAGE, timeout_s: float = 300.0) -> str:
    """Write the window's screenshot to ``out`` (PNG) after segmenting sample image ``image``; returns ``out``."""
    import napari
    from npe2 import PluginManager
    from qtpy.QtCore import QEventLoop, QTimer

    PluginManager.instance().discover()
    viewer = napari.Viewer(show=True)
    try:
        viewer.window._qt_window.resize(1200, 760)
        with Image.open(BUNDLE / "sample_data" / "dsb2018" / "images" / f"{image}.png") as im:
            viewer.add_image(np.asarray(im), name=image[:12])
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment (R2AttU-Net)")
        loop = QEventLoop()
        worker = widget.run()
        worker.finished.connect(loop.quit)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec_()
        if len(viewer.layers) != 3:
            raise RuntimeError(f"the widget added no layers in {timeout_s} s: {widget.status.value}")
        viewer.layers[-1].contour = 0
        viewer.reset_view()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(out, canvas_only=False)
        print(f"{out}: {widget.status.value}", file=sys.stderr)  # the widget's status line: "<image>: N objects"
    finally:
        viewer.close()
    return out


if __name__ == "__main__":
    fire.Fire(screenshot)
