"""The napari plugin: manifest, sample data, and the dock widget's Labels layers against the bundle's own outputs of
``python -m monai.bundle run`` on the same shipped sample images. Widget tests run on Qt's offscreen platform (or
the display of ``xvfb-run``, as in .ci/run); the screenshot test needs a display (``xvfb-run``)."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE, REPO, SAMPLE, run_bundle, run_module

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari", reason="needs the napari extra: pip install -e '.[napari]'")
pytest.importorskip("pytestqt", reason="needs pytest-qt (the napari extra)")

from napari_r2attunet.segment import segment  # noqa: E402
from napari_r2attunet.widget import SegmentWidget  # noqa: E402

PLUGIN = "r2attunet-microscopy-bundle"
# two shipped images the model never trained on: fluorescence 256x320 and colour tissue (gray on disk) 320x256
IDS = [
    "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64",
    "5ef4442e5b8b0b4cf824b61be4050dfd793d846e0a6800afa4425a2f66e91456",
]


@pytest.fixture(scope="module")
def bundle_outputs(tmp_path_factory):
    """The bundle's inference command on the IDS images: ``{id: (seg, instances, objects rows)}``."""
    tmp = tmp_path_factory.mktemp("napari_ref")
    (tmp / "images").mkdir()
    for i in IDS:
        shutil.copy(SAMPLE / "images" / f"{i}.png", tmp / "images")
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(tmp / "images"),
        "--output_dir",
        str(tmp / "out"),
        "--progress_bar",
        "false",
    )
    outputs = {}
    for i in IDS:
        with open(tmp / "out" / f"{i}_objects.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        outputs[i] = (
            np.asarray(Image.open(tmp / "out" / f"{i}_seg.png")),
            np.asarray(Image.open(tmp / "out" / f"{i}_instances.png")),
            rows,
        )
    return outputs


def test_manifest_and_sample_data(make_napari_viewer):
    from npe2 import PluginManager

    plugins = PluginManager.instance()
    plugins.discover()  # the installed package's entry point napari.manifest
    manifest = plugins.get_manifest(PLUGIN)
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment (R2AttU-Net)"}
    viewer = make_napari_viewer(show=False)
    viewer.open_sample(PLUGIN, "nuclei")
    assert len(viewer.layers) == 12
    first = viewer.layers[IDS[0][:12]]
    assert np.array_equal(first.data, np.asarray(Image.open(SAMPLE / "images" / f"{IDS[0]}.png")))


@pytest.mark.slow
def test_widget_labels_equal_the_bundle_outputs(make_napari_viewer, qtbot, bundle_outputs):
    viewer = make_napari_viewer(show=False)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (R2AttU-Net)")
    assert widget.preset.choices == ("nuclei", "em2d", "em3d", "em2d_mito")
    for i in IDS:
        layer = viewer.add_image(np.asarray(Image.open(SAMPLE / "images" / f"{i}.png")), name=i[:12])
        widget.image.value = layer
        assert widget.run() is not None  # a worker started
        # the widget re-enables its button when the worker has finished (connected before it started, so no
        # race with a worker that ends before the test could wait on its signal)
        qtbot.waitUntil(lambda: widget.button.enabled, timeout=120_000)
        seg, instances, rows = bundle_outputs[i]
        mask_layer = viewer.layers[f"{i[:12]} mask (nuclei)"]
        objects_layer = viewer.layers[f"{i[:12]} objects (nuclei)"]
        assert np.array_equal(mask_layer.data, (seg > 0).astype(np.uint8))
        assert np.array_equal(objects_layer.data, instances) and instances.max() > 5
        features = objects_layer.features
        assert list(features["id"]) == [int(r["id"]) for r in rows]
        assert np.allclose(features["area"], [float(r["area"]) for r in rows])
        assert widget.status.value == f"{i[:12]}: {len(rows)} objects"


def test_widget_reports_errors_without_crashing(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    widget = SegmentWidget(viewer)
    assert widget.run() is None and "choose an image layer" in widget.status.value
    widget.image.value = viewer.add_image(np.zeros((4, 64, 64), np.uint8), name="stack")  # 3D: not for nuclei
    assert widget.run() is not None  # a worker started
    # the widget re-enables its button when the worker has finished (connected before it started, so no
    # race with a worker that ends before the test could wait on its signal)
    qtbot.waitUntil(lambda: widget.button.enabled, timeout=60_000)
    assert widget.status.value.startswith("error:") and "2D images" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["stack"]


def test_segment_stacks_with_an_em_preset():
    """The EM presets take (Z, Y, X) stacks: a 2-section stack of shipped pixels gives a mask of the same shape."""
    image = np.asarray(Image.open(SAMPLE / "images" / f"{IDS[0]}.png"))[:64, :64]
    result = segment(np.stack([image, image[::-1]]), "em3d", BUNDLE)
    assert result.mask.shape == (2, 64, 64) and set(np.unique(result.mask)) <= {0, 1}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run (.ci/run does)")
def test_viewer_screenshot_with_the_widget(tmp_path):
    """The docs' screenshot command, in a shown viewer on the display: the widget's layers are drawn."""
    out = tmp_path / "napari.png"
    proc = run_module("tools.napari_screenshot", "--out", str(out), cwd=REPO)
    shot = np.asarray(Image.open(out))
    assert shot.shape[0] > 400 and shot.shape[1] > 600 and shot[..., :3].std() > 5
    assert "objects" in proc.stderr  # the widget's status line: "<image>: N objects"
