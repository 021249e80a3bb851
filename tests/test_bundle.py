"""The bundle's configs run end to end, through the commands users type, on the shipped sample."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from conftest import BUNDLE, SAMPLE, run_bundle
from scripts.networks import state_dict_config

CONFIGS = BUNDLE / "configs"


@pytest.mark.parametrize("config,workflow_type", [("train.json", "train"), ("inference.json", "inference")])
def test_check_properties(config, workflow_type, monkeypatch, tmp_path):
    monkeypatch.chdir(BUNDLE)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        output_dir=str(tmp_path),  # the TensorBoard writers it builds write there, not into bundle/runs
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.slow
def test_verify_net_in_out():
    run_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
    )


def test_train_and_inference_network_defs_agree():
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.json"))
    # memory_saving only changes how training keeps activations, not the network; inference builds the same class
    # shaped as the weights it loads need (scripts.networks.network_for_weights)
    assert train["network_def"]["_target_"] == "scripts.networks.R2AttUNet"
    assert infer["network_def"]["_target_"] == "scripts.networks.network_for_weights"
    skip = {"_target_", "memory_saving", "weights_file", "load_weights"}
    assert {k: v for k, v in train["network_def"].items() if k not in skip} == {
        k: v for k, v in infer["network_def"].items() if k not in skip
    }


def test_evaluation_scores_the_ensemble_where_the_weights_folder_has_one(tmp_path):
    """evaluate.json's ensemble default: the checkpoint ensemble of a training (the shipped models/nuclei_fast/ensemble)
    is evaluated too, a weights folder without one (the default models/) is evaluated alone instead of failing."""
    for ckpt_dir, expected in ((BUNDLE / "models" / "nuclei_fast", True), (BUNDLE / "models", False)):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
        parser.update({"bundle_root": str(BUNDLE), "ckpt_dir": str(ckpt_dir)})
        assert parser.get_parsed_content("ensemble") is expected


def _list_positions(config, path=""):
    """Ids (``a#0#b``) and references (``@a#1``) in a config that address a list item by its position."""
    position = re.compile(r"#\d+(?=#|$)")
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            if position.search(str(key)):
                found.append(f"{path}{key}")
            found += _list_positions(value, f"{path}{key}#")
    elif isinstance(config, list):
        for i, value in enumerate(config):
            found += _list_positions(value, f"{path}{i}#")
    elif isinstance(config, str):
        found += [f"{path[:-1]}: {ref}" for ref in re.findall(r"@[\w#]+", config) if position.search(ref)]
    return found


def test_configs_override_and_refer_by_name_not_by_list_position():
    """An overlay that says ``handlers#0`` breaks silently when a handler is added in front: none may."""
    found = [
        f"{path.name}: {hit}"
        for path in sorted(CONFIGS.glob("*.json"))
        for hit in _list_positions(json.loads(path.read_text()))
    ]
    assert not found, found


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train for 2 epochs on the shipped sample with the user's command; returns the checkpoint folder."""
    root = tmp_path_factory.mktemp("train")
    run_bundle(
        "run",
        "--config_file",
        "configs/train.json",
        "--logging_file",
        "configs/logging.conf",
        "--num_epochs",
        "2",
        "--ensemble_size",
        "2",
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--ckpt_dir",
        str(root / "models"),
        "--output_dir",
        str(root / "runs"),
    )
    return root


@pytest.mark.slow
def test_train_writes_best_model_ensemble_and_tensorboard(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    ensemble = sorted((models / "ensemble").glob("model_key_metric=*.pt"))
    assert len(ensemble) == 2
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # plain state dict, strict
    assert list((trained / "runs").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_evaluate_best_and_ensemble(trained):
    eval_dir = trained / "eval"
    proc = run_bundle(
        "run",
        "--config_file",
        "['configs/train.json','configs/evaluate.json']",
        "--logging_file",
        "configs/logging.conf",
        "--num_workers",
        "0",
        "--ckpt_dir",
        str(trained / "models"),
        "--eval_dir",
        str(eval_dir),
    )
    names = {
        "val_mean_dice",
        "val_pooled_dice",
        "val_precision",
        "val_recall",
        "val_accuracy",
        "val_roc_auc",
        "val_cohen_kappa",
        "val_mean_iou",
        "val_pooled_iou",
        "val_specificity",
        "val_dsb_score",
        "val_dsb_iou50",
        "val_dsb_iou75",
        "val_object_precision50",
        "val_object_recall50",
        "val_object_f1_50",
    }
    for which in ("best", "ensemble"):
        with open(eval_dir / which / "metrics.csv") as f:
            metrics = {row[0]: float(row[1]) for row in csv.reader(f)}
        assert names <= set(metrics)
        assert all(-1.0 <= v <= 1.0 for v in metrics.values())
        assert all(0.0 <= metrics[k] <= 1.0 for k in names - {"val_cohen_kappa"})
        with open(eval_dir / which / "val_mean_dice_raw.csv") as f:
            rows = list(csv.reader(f))
        assert len(rows) - 1 == len(list((SAMPLE / "images").glob("*.png"))) - 8  # one row per validation image
    # the console names each evaluation by what it evaluates and says where its metrics went
    log = proc.stdout + proc.stderr
    assert f"best checkpoint ({trained / 'models' / 'model.pt'}):" in log and f"metrics in {eval_dir / 'best'}" in log
    assert "checkpoint ensemble (" in log and f"metrics in {eval_dir / 'ensemble'}" in log
    assert "SupervisedEvaluator - INFO - Got new best metric" not in log  # the engines' own lines are silenced


def _write_inputs(folder):
    """Inputs of every supported kind, made from one sample image: gray PNG, RGBA PNG, RGB JPEG, gray TIFF."""
    folder.mkdir()
    gray = Image.open(sorted((SAMPLE / "images").glob("*.png"))[0])
    gray.save(folder / "gray.png")
    gray.convert("RGBA").save(folder / "rgba.png")
    gray.convert("RGB").save(folder / "rgb.jpg")
    gray.crop((0, 0, 200, 150)).save(folder / "small.tif")  # smaller than a window, not a multiple of 16
    return gray


@pytest.mark.slow
def test_inference_writes_masks_at_original_size(trained, tmp_path):
    gray = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--logging_file",
        "configs/logging.conf",
        "--ckpt_dir",
        str(trained / "models"),
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(out),
        "--save_probabilities",
        "True",
        "--save_overlay",
        "True",
    )
    for stem, size in [("gray", gray.size), ("rgba", gray.size), ("rgb", gray.size), ("small", (200, 150))]:
        seg = Image.open(out / f"{stem}_seg.png")
        assert seg.size == size and seg.mode == "L"
        assert set(np.unique(np.asarray(seg))) <= {0, 255}
        assert Image.open(out / f"{stem}_prob.png").size == size
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size == size and overlay.mode == "RGB"
        # objects: one id per nucleus, whose union is the mask, and one table row per id
        instances = np.asarray(Image.open(out / f"{stem}_instances.png"))
        assert np.array_equal(instances > 0, np.asarray(seg) > 0)
        with open(out / f"{stem}_objects.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["id"]) for r in rows] == sorted(set(np.unique(instances).tolist()) - {0})
        assert sum(int(r["area"]) for r in rows) == int((instances > 0).sum())
    with open(out / "summary.csv") as f:
        summary = {r["image"]: int(r["objects"]) for r in csv.DictReader(f)}
    assert set(summary) == {"gray.png", "rgba.png", "rgb.jpg", "small.tif"}
    # one closing line: inputs, files written where, inputs refused
    assert f"4 input(s) segmented: 21 file(s) written to {out}; 0 refused" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_inference_keeps_orientation(tmp_path):
    """With an identity 'network', the mask is the image thresholded at its mean: any flip or transpose shows."""
    image = np.zeros((96, 160), np.uint8)
    image[10:30, 20:120] = 200  # an asymmetric bright bar
    image[50:90, 140:150] = 200
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "bars.png")
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--logging_file",
        "configs/logging.conf",
        "--network_def",
        "$torch.nn.Identity()",
        "--load_weights",
        "false",
        "--precision",
        "fp32",
        "--ensemble",
        "False",
        "--objects",
        "False",
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
    )
    seg = np.asarray(Image.open(tmp_path / "out" / "bars_seg.png"))
    assert np.array_equal(seg, np.where(image > image.mean(), 255, 0))


@pytest.mark.slow
def test_report_scores_figure_and_curves(trained, tmp_path):
    from scripts.report import main as report

    pred = tmp_path / "pred"
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--ckpt_dir",
        str(trained / "models"),
        "--output_dir",
        str(pred),
        "--progress_bar",
        "False",
    )
    report(str(SAMPLE / "datalist.json"), str(pred), str(tmp_path / "report"), tb_dir=str(trained / "runs"))
    result = __import__("json").loads((tmp_path / "report" / "report.json").read_text())
    assert result["scores"]["all"]["images"] == 4 and 0 <= result["scores"]["all"]["pooled Dice"] <= 1
    assert result["training"]["epochs"] == 2
    errors = result["errors at IoU 0.5"]["all"]  # every true nucleus matched or given one reason
    assert errors["tp"] + sum(errors[k] for k in ("merged", "split", "missed", "loose")) == errors["true"] > 0
    assert (tmp_path / "report" / "examples.png").stat().st_size > 0
    assert (tmp_path / "report" / "training_curves.png").stat().st_size > 0


def test_ensemble_postprocessing_is_the_single_networks_after_the_mean():
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from scripts.evaluation import ensemble_postprocessing

    single = Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])
    logits = {"pred0": torch.tensor([[2.0, -2.0]]), "pred1": torch.tensor([[-1.0, -3.0]])}
    both = ensemble_postprocessing(["pred0", "pred1"], single)(dict(logits))
    mean = (torch.sigmoid(logits["pred0"]) + torch.sigmoid(logits["pred1"])) / 2
    assert torch.equal(both["pred"], (mean > 0.5).float())
    one = ensemble_postprocessing(["pred0"], single)({"pred0": logits["pred0"]})
    assert torch.equal(one["pred"], torch.tensor([[1.0, 0.0]]))
    assert ensemble_postprocessing([], single) is single  # ensemble off
    with pytest.raises(ValueError, match="sigmoid"):
        ensemble_postprocessing(["pred0"], Compose([AsDiscreted("pred", threshold=0.5)]))


def test_weights_loader_folds_once_and_keeps_the_weights_when_run_again(tmp_path):
    from ignite.engine import Engine

    from scripts.handlers import WeightsLoader
    from scripts.networks import R2AttUNet

    torch.manual_seed(0)
    trained = R2AttUNet(2, 1, 2, channels=(4, 8, 16)).train()
    trained(torch.rand(4, 1, 32, 32))  # running statistics away from their initial values
    torch.save({"model": trained.state_dict()}, tmp_path / "model.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected = trained.eval()(x)
    net = R2AttUNet(2, 1, 2, channels=(4, 8, 16))
    loader = WeightsLoader(str(tmp_path / "model.pt"), {"model": net}, fold_batch_norm=True)
    engine = Engine(lambda e, b: None)
    loader(engine)
    loader(engine)  # an engine run again (MONAI Label, a second input) must not load into the folded network
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.slow
def test_star_convex_objects_train_and_segment(tmp_path):
    """``--rays``: the 0.12 weights (models/nuclei_fast) with star-convex distance channels added (tools.add_output_channel) train
    through train.json and segment through inference.json given only their folder (test-time flips put the rays
    back), the objects seeded by their polygons (``--seeds`` auto: star): one id per object, whose union is the mask."""
    from tools.add_output_channel import main as add_output_channel

    init = add_output_channel(
        str(BUNDLE / "models" / "nuclei_fast" / "model.pt"), str(tmp_path / "init.pt"), 18, new_bias=-3.4, rays=16
    )
    star = ["--rays", "16", "--network_def#out_channels", "18", "--seeds", "star"]
    star += ["--network_def#channels", "[16,32,64,128,256]", "--contact", "False"]
    models = tmp_path / "models"
    run_bundle(
        "run",
        "--config_file",
        "configs/train.json",
        "--num_epochs",
        "1",
        "--finetune",
        "true",
        "--finetune_model_path",
        init,
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(tmp_path / "runs"),
        "--num_workers",
        "0",
        "--progress_bar",
        "false",
        *star,
    )
    config = state_dict_config(torch.load(models / "model.pt", weights_only=True))
    assert config["out_channels"] == 18 and config["rays"] == 16
    # the training Dice is the mask's (the shipped mask channel scores ~0.9 on the sample), not a mean over the
    # centre map and ray channels too (0.04 before 0.12.1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(f)).Reload() for f in (tmp_path / "runs").glob("events.out.tfevents.*")]
    tagged = [acc for acc in events if "train_mean_dice" in acc.Tags()["scalars"]]
    train_dice = [e.value for acc in tagged for e in acc.Scalars("train_mean_dice")]
    assert len(train_dice) == 1 and train_dice[0] > 0.7
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((SAMPLE / "images").glob("*.png"))[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--ckpt_dir",
        str(models),
        "--dataset_dir",
        str(images),
        "--output_dir",
        str(out),
        "--tta",
        "2",
    )  # the network, the seeds (auto: star) and the rays the flips remap all follow the weights
    segs = sorted(out.glob("*_seg.png"))
    assert len(segs) == 3
    counts = []
    for seg in segs:
        mask = np.asarray(Image.open(seg)) > 0
        instances = np.asarray(Image.open(str(seg).replace("_seg.png", "_instances.png")))
        assert np.array_equal(instances > 0, mask)
        counts.append(len(np.unique(instances[mask])))
    assert sum(counts) > len(segs)  # the sample's images hold many nuclei each
