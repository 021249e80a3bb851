"""Model Zoo release: metadata against the bundle specification's schema (offline), TorchScript and ONNX export of the
shipped weights, inference from models/model.ts, the release archive, ``monai.bundle download`` of it and inference
from the downloaded copy, and MLflow tracking with a local store."""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata
from PIL import Image

from conftest import BUNDLE, REPO, SAMPLE, run_bundle, run_module
from scripts.metrics import dice

CONFIGS = BUNDLE / "configs"
SCHEMA = REPO / "schemas" / "meta_schema_20240725.json"
IMAGE = "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64"  # 320x256 (not square), validation split


def _metadata() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sample_dice(out_dir: Path) -> float:
    """Dice of ``<out_dir>/<IMAGE>_seg.png`` against the sample label (same shape: original size)."""
    pred = np.asarray(Image.open(out_dir / f"{IMAGE}_seg.png")) > 0
    label = np.asarray(Image.open(SAMPLE / "labels" / f"{IMAGE}.png")) > 0
    assert pred.shape == label.shape
    return dice(pred, label)


def _one_image(folder):
    folder.mkdir()
    shutil.copy(SAMPLE / "images" / f"{IMAGE}.png", folder)
    return folder


# --- metadata -----------------------------------------------------------------------------------------------------


def test_metadata_verifies_offline_against_the_schema_in_the_repo():
    assert _metadata()["schema"].endswith("/" + SCHEMA.name)  # the copy is the schema the metadata names
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))  # raises ValueError if invalid


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("authors"),
        lambda m: m.pop("network_data_format"),
        lambda m: m["network_data_format"]["outputs"]["pred"].pop("channel_def"),
        lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="one"),
        lambda m: m.update(version="two"),
    ],
)
def test_schema_rejects_incomplete_metadata(tmp_path, change):
    metadata = _metadata()
    change(metadata)
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def test_metadata_is_complete_for_the_model_zoo():
    metadata = _metadata()
    assert metadata["version"] in metadata["changelog"]  # Model Zoo CI: verify_version_changes
    for key in ("intended_use", "data_source", "license", "data_license", "references", "eval_metrics"):
        assert metadata[key], key
    assert {"pytorch-ignite", "itk", "pillow"} <= set(metadata["required_packages_version"])
    # export (ONNX), tracking (MLflow) and star-convex objects (StarDist) are optional, as the project's extras say
    assert set(metadata["optional_packages_version"]) == {"onnx", "onnxscript", "onnxruntime", "mlflow", "stardist"}
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert image["spatial_shape"] == pred["spatial_shape"] == ["16*n", "16*n"]
    assert image["channel_def"] == {"0": "image"}
    # MONAI Label takes the label names from the output's channel_def, skipping "background"
    # channel_def: the values of the mask inference and MONAI Label return (0 background, 1 nucleus); the network has
    # one more output channel, the centre map that separates touching nuclei
    assert pred["format"] == "segmentation" and pred["channel_def"] == {"0": "background", "1": "nucleus"}
    assert pred["num_channels"] == 2  # the network's outputs, as monai.bundle verify_net_in_out checks


# --- export -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``models/model.ts`` and ``models/model.onnx`` of the shipped weights, exported as the README's
    ``ckpt_export`` and ``onnx_export`` commands do (same functions and arguments, in this process)."""
    from monai.bundle import ckpt_export, onnx_export

    models = tmp_path_factory.mktemp("export") / "models"
    models.mkdir()
    common = dict(
        net_id="network_def",
        ckpt_file=str(BUNDLE / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
    )
    ckpt_export(filepath=str(models / "model.ts"), **common)
    axes = {0: "batch", 2: "height", 3: "width"}
    onnx_export(
        filepath=str(models / "model.onnx"),
        input_shape=[1, 1, 256, 256],
        **common,
        converter_kwargs={
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": {"image": axes, "pred": axes},
        },
    )
    return models


@pytest.fixture(scope="module")
def eager():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


SHAPES = [(1, 1, 256, 256), (2, 1, 128, 192)]  # the export shape, and another batch and size (dynamic axes)


@pytest.mark.parametrize("shape", SHAPES)
def test_torchscript_matches_the_eager_network(exported, eager, shape):
    from monai.data import load_net_with_metadata

    ts, meta, extra = load_net_with_metadata(str(exported / "model.ts"), more_extra_files=("inference.json",))
    assert meta["version"] == _metadata()["version"] and "inference.json" in extra
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = eager(x), ts(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("shape", SHAPES)
def test_onnx_runtime_matches_the_eager_network(exported, eager, shape):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(x).numpy()
    got = session.run(["pred"], {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-3


@pytest.mark.slow
def test_inference_runs_from_torchscript(exported, tmp_path):
    """``inference_ts.json`` on top of ``inference.json`` needs only ``models/model.ts`` (no model.pt in its
    ckpt_dir); the network itself matches the eager one (tests above), so the mask is the best checkpoint's."""
    images = _one_image(tmp_path / "in")
    ts_models = tmp_path / "ts_models"
    ts_models.mkdir()
    shutil.copy(exported / "model.ts", ts_models)
    run_bundle(
        "run",
        "--config_file",
        "['configs/inference.json','configs/inference_ts.json']",
        "--logging_file",
        "configs/logging.conf",
        "--ckpt_dir",
        str(ts_models),
        "--dataset_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "False",
    )
    # 0.876 with the 0.13 default weights, as models/model.pt through inference.json
    assert _sample_dice(tmp_path / "out") > 0.8


# --- release archive and download ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The release archive written by the README's command."""
    from tools.package import BUNDLE_NAME

    out = tmp_path_factory.mktemp("dist")
    run_module("tools.package", "archive", "--out", str(out), cwd=REPO, timeout=300)
    archive = out / f"{BUNDLE_NAME}_v{_metadata()['version']}.zip"
    assert archive.is_file(), list(out.iterdir())
    return archive


@pytest.mark.slow
def test_archive_has_the_model_zoo_layout(release):
    from tools.package import BUNDLE_NAME, MAX_FILE_BYTES

    with zipfile.ZipFile(release) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        yml = archive.read(f"{BUNDLE_NAME}/large_files.yml").decode()
    assert {name.split("/")[0] for name in infos} == {BUNDLE_NAME}  # one top folder named after the bundle
    tops = {name.split("/")[1] for name in infos}
    assert tops == {"configs", "scripts", "models", "docs", "LICENSE", "large_files.yml"}
    for required in (
        "configs/metadata.json",
        "configs/inference.json",
        "configs/train.json",
        "configs/inference_ts.json",
        "models/model.pt",
        "docs/README.md",
        "scripts/networks.py",
    ):
        assert f"{BUNDLE_NAME}/{required}" in infos, required
    ensemble = sorted(n for n in infos if n.startswith(f"{BUNDLE_NAME}/models/ensemble/"))
    assert len(ensemble) == len(list((BUNDLE / "models" / "ensemble").glob("*.pt")))
    assert not [n for n in infos if "checkpoints/" in n or "__pycache__" in n or n.endswith(".pyc")]
    assert max(i.file_size for i in infos.values()) <= MAX_FILE_BYTES
    # large_files.yml names every weights file with the MD5 of the shipped file
    import yaml

    entries = yaml.safe_load(yml)["large_files"]
    weights = {f"models/{n.split('/models/')[1]}" for n in infos if "/models/" in n}
    assert {e["path"] for e in entries} == weights
    for e in entries:
        assert e["hash_type"] == "md5" and e["hash_val"] == _md5(BUNDLE / e["path"]), e["path"]


def test_package_refuses_big_files_and_missing_changelog(tmp_path):
    from tools.package import MAX_FILE_BYTES, package

    root = tmp_path / "bundle"
    shutil.copytree(CONFIGS, root / "configs")
    shutil.copy(BUNDLE / "LICENSE", root / "LICENSE")
    (root / "models").mkdir()
    with open(root / "models" / "model.pt", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match="model.pt"):
        package(str(tmp_path / "out"), bundle_root=str(root))
    (root / "models" / "model.pt").write_bytes(b"weights")
    metadata = _metadata()
    metadata["version"] = "9.9.9"
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="metadata.json"):
        package(str(tmp_path / "out"), bundle_root=str(root))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_download_installs_the_archive_and_inference_runs_from_it(release, tmp_path):
    from tools.package import BUNDLE_NAME

    bundles = tmp_path / "bundles"
    run_bundle("download", "--name", BUNDLE_NAME, "--url", release.as_uri(), "--bundle_dir", str(bundles))
    installed = bundles / BUNDLE_NAME
    for w in ["models/model.pt", *(f"models/ensemble/{p.name}" for p in (BUNDLE / "models" / "ensemble").glob("*.pt"))]:
        assert _md5(installed / w) == _md5(BUNDLE / w), w
    images = _one_image(tmp_path / "in")
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "out"),
        "--progress_bar",
        "False",
        cwd=installed,
    )
    assert _sample_dice(tmp_path / "out") > 0.8  # the shipped ensemble scores 0.8 or more on every sample image


# --- experiment tracking ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_tracking_with_a_local_store(tmp_path):
    """``--tracking mlflow`` (MONAI's built-in settings) logs the training loss and validation Dice to a local
    SQLite store under ``output_dir``."""
    import mlflow

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    small = [p.stem for p in sorted((SAMPLE / "images").glob("*.png")) if Image.open(p).size == (256, 256)]
    for stem in small:
        shutil.copy(SAMPLE / "images" / f"{stem}.png", data / "images")
        shutil.copy(SAMPLE / "labels" / f"{stem}.png", data / "labels")
    items = [{"image": f"images/{s}.png", "label": f"labels/{s}.png"} for s in small]
    (data / "datalist.json").write_text(json.dumps({"training": items[1:], "validation": items[:1]}))
    run_bundle(
        "run",
        "--config_file",
        "configs/train.json",
        "--logging_file",
        "configs/logging.conf",
        "--tracking",
        "mlflow",
        "--experiment_name",
        "release_test",
        "--dataset_dir",
        str(data),
        "--num_epochs",
        "1",
        "--batch_size",
        str(len(items) - 1),
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "runs"),
    )
    store = tmp_path / "runs" / "mlruns.db"
    assert store.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("release_test").experiment_id])
    metrics = set().union(*(r.data.metrics for r in runs))
    assert {"train_loss", "val_mean_dice"} <= metrics, metrics


def test_large_files_in_the_bundle_root_list_the_shipped_weights():
    """The Model Zoo's large_files.yml sits in the bundle root and matches the weights on disk (path, MD5, url)."""
    import yaml

    from scripts.download import file_md5
    from tools.package import BUNDLE_NAME, URL_BASE, bundle_files

    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    _, weights = bundle_files(BUNDLE)
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    base = URL_BASE.format(name=BUNDLE_NAME, version=version)
    assert [e["path"] for e in entries] == weights
    for e in entries:
        assert e["hash_val"] == file_md5(BUNDLE / e["path"]), f"{e['path']}: run python -m tools.package large_files"
        assert e["url"] == f"{base}/{e['path']}" and e["hash_type"] == "md5"


def test_weights_removed_are_fetched_from_a_file_base(tmp_path):
    """As the Model Zoo's CI does: a bundle without its weights gets them back from the urls of large_files.yml
    (here a file:// base), checked against their MD5, and the inference config then loads them."""
    from monai.bundle import ConfigParser, download_large_files

    from scripts.download import file_md5
    from tools.package import write_large_files

    copy = tmp_path / "bundle"
    for tree in ("configs", "scripts", "models"):
        shutil.copytree(BUNDLE / tree, copy / tree, ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
    shutil.copy(BUNDLE / "LICENSE", copy / "LICENSE")
    write_large_files(str(copy), url_base=(BUNDLE.as_uri() + "/"))
    expected = {p.relative_to(copy).as_posix(): file_md5(p) for p in (copy / "models").rglob("*.pt")}
    for p in (copy / "models").rglob("*.pt"):
        p.unlink()
    download_large_files(bundle_path=str(copy))
    assert {p.relative_to(copy).as_posix(): file_md5(p) for p in (copy / "models").rglob("*.pt")} == expected
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(copy / "models" / "model.pt", weights_only=True))
