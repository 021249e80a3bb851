"""The Model Zoo's unit test of a bundle (its ``ci/unit_tests/test_<bundle>.py`` form): the configs run through
``ConfigWorkflow`` on a small synthetic dataset, train + evaluate, then inference without loading weights."""

import json
import os

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from conftest import BUNDLE

CONFIGS = BUNDLE / "configs"
TRAIN_OVERRIDE = {
    "bundle_root": str(BUNDLE),
    "num_epochs": 1,
    "batch_size": 2,
    "patch_size": [64, 64],
    "network_def#channels": [4, 8, 16, 32, 64],
    "train#dataset#cache_rate": 0.0,
    "validate#dataset#cache_rate": 0.0,
    "num_workers": 0,
    "progress_bar": False,
}
INFER_OVERRIDE = {
    "bundle_root": str(BUNDLE),
    "load_weights": False,
    "network_def#channels": [4, 8, 16, 32, 64],
    "progress_bar": False,
}


@pytest.fixture
def fake_dataset(tmp_path):
    """Six 96x80 gray images with two or three round nuclei each (instance ids), and their datalist."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    items = []
    for s in range(6):
        label = np.zeros((80, 96), np.uint8)
        for k in range(1, 3 + s % 2):
            cy, cx = rng.integers(15, 65), rng.integers(15, 81)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = k
        image = np.where(label > 0, 180, 30).astype(np.uint8) + rng.integers(0, 20, label.shape, dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"image_{s}.png")
        Image.fromarray(label).save(tmp_path / f"label_{s}.png")
        items.append({"image": f"image_{s}.png", "label": f"label_{s}.png"})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items[:4], "validation": items[4:]}))
    return tmp_path


def test_train_eval_config(fake_dataset, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    override = dict(
        TRAIN_OVERRIDE,
        dataset_dir=str(fake_dataset),
        ckpt_dir=str(models),
        output_dir=str(models / "runs"),
        eval_dir=str(models / "eval"),
    )
    trainer = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"),
        **override,
    )
    trainer.initialize()
    assert not trainer.check_properties()
    trainer.run()
    trainer.finalize()
    assert (models / "model.pt").is_file()

    validator = ConfigWorkflow(
        workflow_type="eval",
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"),
        **override,
    )
    validator.initialize()
    validator.run()
    validator.finalize()
    assert (models / "eval" / "best" / "metrics.csv").is_file()


def test_infer_config(fake_dataset, tmp_path):
    override = dict(INFER_OVERRIDE, dataset_dir=str(fake_dataset), output_dir=str(tmp_path / "out"))
    inferrer = ConfigWorkflow(
        workflow_type="infer",
        config_file=str(CONFIGS / "inference.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"),
        **override,
    )
    inferrer.initialize()
    assert not inferrer.check_properties()
    inferrer.run()
    inferrer.finalize()
    written = sorted(os.listdir(tmp_path / "out"))
    assert "image_0_seg.png" in written and "image_0_instances.png" in written and "summary.csv" in written
