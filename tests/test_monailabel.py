"""The released bundle in MONAI Label's bundle app (``monaibundle``): a real MONAI Label 0.8.5 server on 127.0.0.1,
with the bundle at ``<app>/model/<name>``, segments a DSB2018 image and trains for one epoch through its REST API.

MONAI Label pins older packages than the project (numpy<2, jsonschema<4, pydicom 2), so it runs from its own
environment, built by ``.ci/monailabel_env`` (which ``.ci/run`` calls); without it these tests are skipped.
``MONAILABEL_ENV`` names another environment folder.
"""

import os
import re
import shutil
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import REPO, SAMPLE
from scripts.metrics import dice

ENV = Path(os.environ.get("MONAILABEL_ENV", REPO / ".venv-monailabel"))
PYTHON = ENV / "bin" / "python"
IMAGE = "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64"  # 320x256 (not square)
# five small sample images: MONAI Label's default 0.2 validation split leaves 4 for one training batch
STUDIES = [
    IMAGE,
    "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1",
    "5ef4442e5b8b0b4cf824b61be4050dfd793d846e0a6800afa4425a2f66e91456",
    "a08166d91d2cca263d2dd52764dc25c9c582b7a5ece2b802749fa4be33187c49",
    "aa47f0b303b1d525b52452ae3a8553b2d61d719a28aee547e2ef1fc6730a078f",
]

pytestmark = [
    pytest.mark.slow,  # the whole module runs the bundle and a server in subprocesses
    pytest.mark.skipif(
        not PYTHON.is_file(), reason=f"MONAI Label environment not built at {ENV}: run .ci/monailabel_env (CI does)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start ``monailabel start_server`` with the release archive unpacked at ``<app>/model/<name>``; yields
    ``(base_url, bundle_dir)`` and stops the server afterwards."""
    from tools.package import BUNDLE_NAME, package

    root = tmp_path_factory.mktemp("monailabel")
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "monailabel.main",
            "apps",
            "--download",
            "--name",
            "monaibundle",
            "--output",
            str(root / "apps"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    app = root / "apps" / "monaibundle"
    with zipfile.ZipFile(package(str(root / "dist"))) as archive:
        archive.extractall(app / "model")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for stem in STUDIES:
        shutil.copy(SAMPLE / "images" / f"{stem}.png", studies)
        shutil.copy(SAMPLE / "labels" / f"{stem}.png", studies / "labels" / "final")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(PYTHON),
            "-m",
            "monailabel.main",
            "start_server",
            "--app",
            str(app),
            "--studies",
            str(studies),
            "--conf",
            "models",
            BUNDLE_NAME,
            "--conf",
            "zoo_source",
            "github",
            "--conf",
            "sam2",
            "false",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env={**os.environ, "MONAI_LABEL_DATASTORE_FILE_EXT": '["*.png"]'},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"MONAI Label server exited {proc.returncode}:\n{(root / 'server.log').read_text()[-4000:]}"
                )
            try:
                if requests.get(f"{base}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server not up in 180 s:\n{(root / 'server.log').read_text()[-4000:]}")
            time.sleep(1)
        yield base, app / "model" / BUNDLE_NAME
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_app_lists_the_bundle_with_its_labels(server):
    from tools.package import BUNDLE_NAME

    base, _ = server
    info = requests.get(f"{base}/info/", timeout=30).json()
    model = info["models"][BUNDLE_NAME]
    assert model["type"] == "segmentation" and model["dimension"] == 2
    assert model["labels"] == {"nucleus": 1}  # from metadata.json's channel_def, background left out
    assert BUNDLE_NAME in info["trainers"]
    assert info["datastore"]["total"] == len(STUDIES)


def test_segments_an_image_through_the_rest_api(server, tmp_path):
    from tools.package import BUNDLE_NAME

    base, _ = server
    response = requests.post(f"{base}/infer/{BUNDLE_NAME}", params={"image": IMAGE, "output": "image"}, timeout=300)
    assert response.status_code == 200, response.text[-2000:]
    (tmp_path / "mask.png").write_bytes(response.content)
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    label = np.asarray(Image.open(SAMPLE / "labels" / f"{IMAGE}.png")) > 0
    assert mask.shape == label.shape  # original size and orientation (the image is not square)
    assert set(np.unique(mask)) == {0, 1}  # label values: 1 = nucleus
    pred = mask > 0
    assert dice(pred, label) > 0.8  # measured 0.876 with the 0.13 default weights


def test_trains_one_epoch_through_the_rest_api(server):
    from tools.package import BUNDLE_NAME

    base, bundle = server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns
    request = {"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": False, "tracking": "None"}
    response = requests.post(f"{base}/train/{BUNDLE_NAME}", json=request, timeout=60)
    assert response.status_code == 200, response.text[-2000:]
    deadline = time.monotonic() + 600
    while True:
        status = requests.get(f"{base}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(2)
    details = "\n".join(status.get("details", []))
    assert status.get("status") == "DONE", details[-4000:]
    # started from the shipped weights (pretrained): one epoch from scratch on the sample validates at about 0.19
    # (details keeps the last 20 log lines only, which need not include the loader's "Restored all variables")
    dice = re.findall(r"val_mean_dice: ([0-9.]+)", details)
    assert dice and float(dice[-1]) > 0.6, details[-4000:]
    # the new best model replaces models/model.pt; its checkpoint ensemble stays outside models/*.pt
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns > before
    assert [p.name for p in (bundle / "models").glob("*.pt")] == ["model.pt"]
    assert list((bundle / "models" / "ensemble").glob("model_key_metric=*.pt"))
