"""What a newcomer meets in the first hour: mistyped options, wrong folders, the option list, building a datalist
from two folders, the evaluation's labels and the closing line of an inference."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE, SAMPLE, run_bundle, run_module
from scripts import InputError, MissingInputError
from scripts.data import prepare_folders
from scripts.options import _command_line, unknown_options


def _bundle(*args: str) -> subprocess.CompletedProcess:
    return run_bundle("run", *args, check=False, timeout=300)


def _last_lines(proc: subprocess.CompletedProcess, n: int = 2) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-n:]


def test_unknown_options_are_named_with_the_closest_ones():
    unknown = unknown_options(
        ["dataset_dri", "dataset_dir", "network_def#channels", "train#trainer#amp", "config_file"],
        [str(BUNDLE / "configs" / "train.json")],
    )
    assert [name for name, _ in unknown] == ["dataset_dri"]
    assert unknown[0][1][0] == "dataset_dir"
    assert [n for n, _ in unknown_options(["losses#focal_tverski"], [str(BUNDLE / "configs" / "train.json")])] == [
        "losses#focal_tverski"
    ]
    configs, options = _command_line(
        [
            "/x/monai/bundle/__main__.py",
            "run",
            "--config_file",
            "['a.json','b.json']",
            "--num_epochs=3",
            "--ckpt_dir",
            "m",
        ]
    )
    assert configs == ["a.json", "b.json"] and options == ["config_file", "num_epochs", "ckpt_dir"]
    assert _command_line(["/x/pytest", "run"]) is None


@pytest.mark.slow
def test_a_mistyped_option_stops_the_run_at_once(tmp_path):
    proc = _bundle(
        "--config_file", "configs/inference.json", "--dataset_dri", str(tmp_path), "--output_dir", str(tmp_path)
    )
    assert proc.returncode != 0
    last = _last_lines(proc, 1)[0]
    assert last.startswith("error: unknown option --dataset_dri") and "--dataset_dir" in last
    assert not list(tmp_path.iterdir())  # nothing was segmented


@pytest.mark.slow
def test_a_wrong_folder_is_the_last_line(tmp_path):
    proc = _bundle("--config_file", "configs/inference.json", "--dataset_dir", str(tmp_path / "does_not_exist"))
    assert proc.returncode != 0
    assert _last_lines(proc, 1) == [f"error: input folder not found: {tmp_path / 'does_not_exist'} (--dataset_dir)"]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_training_data_errors_are_the_last_line(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    datalist = {
        "training": [{"image": str(tmp_path / "broken.png"), "label": str(SAMPLE / "labels" / "x.png")}],
        "validation": [{"image": str(tmp_path / "broken.png"), "label": str(SAMPLE / "labels" / "x.png")}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    proc = _bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(tmp_path), "--ckpt_dir", str(tmp_path / "m")
    )
    assert proc.returncode != 0
    last = _last_lines(proc, 1)[0]
    assert last.startswith("error: invalid training data: ") and "broken.png" in last and "--skip_bad_samples" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_options_are_listed_with_defaults():
    text = run_module("scripts.options").stdout
    assert "--dataset_dir" in text and "--ensemble" in text and "--num_epochs" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("--objects"))
    assert "true" in line and "instance labels" in line


def test_prepare_folders_pairs_images_and_masks(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(5):
        Image.fromarray(np.full((8, 8), k * 10, np.uint8)).save(images / f"cell{k}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(labels / f"cell{k}{'_mask' if k % 2 else ''}.png")
    datalist = prepare_folders(images, labels, tmp_path / "out", val_fraction=0.2)
    items = datalist["training"] + datalist["validation"]
    assert len(items) == 5 and len(datalist["validation"]) == 1
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == datalist
    for it in items:
        assert (tmp_path / "out" / it["image"]).is_file() and (tmp_path / "out" / it["label"]).is_file()
        assert it["label"].split("/")[-1].startswith(it["id"])
    (labels / "cell3_mask.png").unlink()
    with pytest.raises(InputError, match="cell3.png"):
        prepare_folders(images, labels, tmp_path / "out")
    with pytest.raises(MissingInputError, match="--labels folder not found"):
        prepare_folders(images, tmp_path / "nothing", tmp_path / "out")
