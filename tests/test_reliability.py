"""Bad input is named, interrupted work resumes, nothing is lost, runs are reproducible."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE, NUCLEI_FAST, SAMPLE, run_bundle, run_module
from scripts.check import InputCheck, check_datalist, check_dsb2018, validated
from scripts.writers import AtomicPILWriter

pytestmark = pytest.mark.slow  # the whole module runs the bundle in subprocesses

SAMPLE_IDS = sorted(p.stem for p in (SAMPLE / "images").glob("*.png"))


def _bad_dataset(root):
    """A prepared dataset with one good sample and one sample for each kind of problem."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    good = SAMPLE_IDS[0]
    for sub in ("images", "labels"):
        (root / sub / "good.png").write_bytes((SAMPLE / sub / f"{good}.png").read_bytes())
    big = (SAMPLE / "images" / f"{SAMPLE_IDS[1]}.png").read_bytes()
    (root / "images" / "truncated.png").write_bytes(big[: len(big) // 3])
    (root / "labels" / "truncated.png").write_bytes((SAMPLE / "labels" / f"{SAMPLE_IDS[1]}.png").read_bytes())
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "images" / "size.png")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / "labels" / "size.png")
    Image.fromarray(np.full((64, 64), 3000, np.uint16)).save(root / "images" / "deep.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "labels" / "deep.png")
    pages = [Image.fromarray(np.zeros((64, 64), np.uint8))] * 2
    pages[0].save(root / "images" / "stack.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "labels" / "stack.png")
    items = [
        {"image": f"images/{n}", "label": f"labels/{n.split('.')[0]}.png"}
        for n in ("good.png", "truncated.png", "size.png", "deep.png", "stack.tif")
    ]
    items.append({"image": "images/good.png", "label": "labels/good.png"})  # duplicate
    items.append({"image": "images/good.png", "label": "labels/missing.png"})
    (root / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
    return [{k: str(root / v) for k, v in it.items()} for it in items]


def test_check_names_every_problem(tmp_path):
    items = _bad_dataset(tmp_path)
    problems = check_datalist(items)
    text = "\n".join(map(str, problems))
    assert "truncated.png: unreadable or truncated image" in text
    assert "labels/size.png: mask size (32, 64) differs from image size (64, 64)" in text
    assert "deep.png: 16/32-bit integer image" in text and "ERROR" not in [
        str(p)[:5] for p in problems if "deep" in p.path
    ]
    assert "stack.tif: a stack of 2 pages" in text
    assert "listed 3 times" in text
    assert "missing.png: file not found" in text
    with pytest.raises(ValueError, match="invalid training data"):
        validated(items, what="training data")
    kept = validated(items, skip_bad=True)
    assert {os.path.basename(it["image"]) for it in kept} == {"deep.png"}  # good.png is a triplicate, so bad


def test_training_refuses_invalid_data_unless_told(tmp_path):
    _bad_dataset(tmp_path / "data")
    args = [
        "run",
        "--config_file",
        "configs/train.json",
        "--dataset_dir",
        str(tmp_path / "data"),
        "--num_epochs",
        "1",
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "runs"),
    ]
    earlier = tmp_path / "models" / "ensemble" / "model_key_metric=0.9.pt"  # an earlier training's ensemble
    earlier.parent.mkdir(parents=True)
    earlier.write_text("x")
    proc = run_bundle(*args, check=False)
    assert proc.returncode != 0
    assert "truncated.png: unreadable or truncated image" in proc.stderr + proc.stdout
    assert "--skip_bad_samples true" in proc.stderr + proc.stdout
    assert earlier.is_file()  # a training that never started leaves the earlier ensemble alone
    data = tmp_path / "data"
    for sub in ("images", "labels"):  # a second valid sample
        (data / sub / "deep2.png").write_bytes((data / sub / "deep.png").read_bytes())
    datalist = json.loads((data / "datalist.json").read_text())
    datalist["training"].append({"image": "images/deep2.png", "label": "labels/deep2.png"})
    datalist["validation"] = [{"image": "images/deep2.png", "label": "labels/deep2.png"}]
    (data / "datalist.json").write_text(json.dumps(datalist))
    # 3 usable samples, fewer than a batch (4): one smaller batch an epoch rather than none
    out = run_bundle(*args, "--skip_bad_samples", "True", "--logging_file", "configs/logging.conf")
    assert "skipped" in out.stdout + out.stderr and (tmp_path / "models" / "model.pt").is_file()
    assert "Epoch[1] Complete" in out.stdout + out.stderr and "skip the `run`" not in out.stdout + out.stderr
    assert not earlier.exists() and len(list(earlier.parent.glob("model_key_metric=*.pt"))) == 1  # this training's own


def test_check_commands(tmp_path, dsb2018_dir):
    sid = SAMPLE_IDS[0]
    (tmp_path / "src" / sid / "images").mkdir(parents=True)
    (tmp_path / "src" / sid / "images" / f"{sid}.png").write_bytes(
        (dsb2018_dir / sid / "images" / f"{sid}.png").read_bytes()
    )
    assert any("image folder with no masks" in str(p) for p in check_dsb2018(tmp_path / "src"))
    proc = run_module("scripts.check", "dsb2018", "--src", str(tmp_path / "src"), check=False)
    assert proc.returncode == 1 and "image folder with no masks" in proc.stdout and sid in proc.stdout
    run_module("scripts.check", "datalist", "--datalist", str(SAMPLE / "datalist.json"))


def test_inference_skips_bad_files_and_exits_nonzero(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.png").write_bytes((SAMPLE / "images" / f"{SAMPLE_IDS[0]}.png").read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "in" / "tiny.tif")
    check = InputCheck([{"image": str(p)} for p in sorted((tmp_path / "in").iterdir())])
    assert [os.path.basename(it["image"]) for it in check.good] == ["good.png"]
    proc = run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--network_def",
        "$torch.nn.Identity()",
        "--load_weights",
        "false",
        "--ensemble",
        "false",
        "--objects",
        "false",  # the identity network has one output channel
        "--save_overlay",
        "false",
        "--save_probabilities",
        "false",  # lower-case flags are flags too
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        check=False,
    )
    assert proc.returncode != 0
    assert "broken.png: unreadable" in proc.stderr and "tiny.tif: image of size (3, 5)" in proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["good_seg.png"]  # every good output, no partial file


def test_atomic_writer_leaves_no_partial_file(tmp_path, monkeypatch):
    writer = AtomicPILWriter(output_dtype=np.uint8)
    writer.set_data_array(torch.ones(1, 16, 16) * 255, channel_dim=0)
    writer.write(tmp_path / "ok.png")
    assert os.listdir(tmp_path) == ["ok.png"]

    def interrupted(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    writer.set_data_array(torch.ones(1, 16, 16), channel_dim=0)
    with pytest.raises(KeyboardInterrupt):
        writer.write(tmp_path / "cut.png")
    assert os.listdir(tmp_path) == ["ok.png"]


def _train_args(root, epochs, fast: bool = True):
    """A short training of ``epochs`` into ``root``; ``fast``: of the 0.12 network (:data:`conftest.NUCLEI_FAST`)."""
    return [
        "run",
        "--config_file",
        "configs/train.json",
        "--logging_file",
        "configs/logging.conf",
        "--num_epochs",
        str(epochs),
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--ckpt_dir",
        str(root / "models"),
        "--output_dir",
        str(root / "runs"),
        *(NUCLEI_FAST if fast else ()),
    ]


def test_sigkill_then_resume_then_nan_stop(tmp_path):
    state_dir = tmp_path / "models" / "checkpoints"
    # stopped hard (as by SIGKILL) right after the first epoch's training state is on disk
    proc = run_bundle(*_train_args(tmp_path, 4), check=False, stop_after=(1, "checkpoint_*.pt"))
    assert proc.returncode == 137, proc.stderr[-3000:]
    done = sorted(state_dir.glob("checkpoint_*.pt"))
    assert [p.name for p in done] == ["checkpoint_1.pt"]
    assert not list(state_dir.glob("*.tmp")) and not list(state_dir.glob(".*"))
    killed_at = 1

    out = run_bundle(*_train_args(tmp_path, 4), "--resume", "True").stdout
    assert f"resuming training from {done[-1]}" in out
    assert f"Epoch[{killed_at}] Complete" not in out and "Epoch[4] Complete" in out
    assert [p.name for p in state_dir.glob("checkpoint_*.pt")] == ["checkpoint_4.pt"]
    state = torch.load(state_dir / "checkpoint_4.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "ensemble_saver", "best_saver"} <= set(state)
    # the evaluator's best key metric of the whole run (epochs before and after the resume) travels with the state
    best = state["best_saver"]
    assert best["best_metric"] == pytest.approx(max(float(p) for p, _ in best["_saved"]))
    assert 1 <= best["best_metric_epoch"] <= 4
    assert state["trainer"]["iteration"] == 4 * state["trainer"]["epoch_length"]
    assert len(list((tmp_path / "models" / "ensemble").glob("*.pt"))) == 3

    before = (state_dir / "checkpoint_4.pt").read_bytes()
    proc = run_bundle(
        *_train_args(tmp_path, 5),
        "--resume",
        "True",
        "--loss",
        "$lambda pred, label: pred.mean() * float('nan')",
        check=False,
    )
    assert proc.returncode != 0
    assert "loss is nan at epoch 5, iteration 1 of 2" in proc.stdout + proc.stderr
    assert (state_dir / "checkpoint_4.pt").read_bytes() == before


def test_saver_state_restores_the_best_metric(tmp_path):
    """A resumed run compares its validation scores with the best of the run so far, not with a fresh -1, so that
    "Got new best metric" and the best epoch stay right; a state from before 0.11 falls back to the saver's score."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver

    from scripts.handlers import SaverState

    def evaluator(best=-1.0, epoch=-1):
        engine = Engine(lambda e, b: None)
        engine.state.best_metric, engine.state.best_metric_epoch = best, epoch
        return engine

    saver = CheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
    saver._key_metric_checkpoint.load_state_dict({"_saved": [(0.45, "model.pt")]})
    state = SaverState(saver, evaluator(0.45, 17)).state_dict()
    assert state["best_metric"] == 0.45 and state["best_metric_epoch"] == 17

    fresh = evaluator()
    SaverState(
        CheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True), fresh
    ).load_state_dict(state)
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (0.45, 17)
    old = evaluator()
    restored = CheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
    SaverState(restored, old).load_state_dict({"_saved": [(0.44, "model.pt")]})
    assert old.state.best_metric == 0.44 and old.state.best_metric_epoch == 0
    assert restored._key_metric_checkpoint.state_dict()["_saved"][0][0] == 0.44


def test_same_seed_same_run(tmp_path):
    losses, weights = [], []
    for run in ("a", "b"):  # one epoch each, no validation: the training itself is what must repeat
        args = _train_args(tmp_path / run, 1)
        args[args.index("--num_workers") + 1] = "2"
        out = run_bundle(*args, "--val_interval", "2").stdout
        losses.append([line.split("train_loss:")[1].strip() for line in out.splitlines() if "train_loss:" in line])
        weights.append(
            torch.load(tmp_path / run / "models" / "checkpoints" / "checkpoint_1.pt", weights_only=False)["model"]
        )
    assert losses[0] and losses[0] == losses[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_mismatched_weights_name_their_configuration(tmp_path):
    """Inference builds the channels and outputs the weights need (scripts.networks.network_for_weights), but not
    another variant: weights of a network without attention gates stop with an error naming their configuration."""
    from scripts.networks import R2AttUNet

    torch.save(R2AttUNet(2, 1, 2, channels=(8, 16, 32), attention=False).state_dict(), tmp_path / "model.pt")
    proc = run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--ckpt_dir",
        str(tmp_path),
        "--output_dir",
        str(tmp_path / "out"),
        "--ensemble",
        "False",
        check=False,
    )
    assert proc.returncode != 0
    expected = "they belong to R2AttUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=[8, 16, 32], attention"
    assert expected in proc.stderr, proc.stderr[-3000:]


def test_large_image_goes_through_sliding_windows(tmp_path):
    """A 2304x2048 image (4.7 M pixels, above the 4.2 M of one whole-image pass) is segmented at full size with the
    shipped network through 256x256 sliding windows, in bounded memory (the output buffers grow with the image, the
    activations only with the window)."""
    rng = np.random.default_rng(0)
    image = (rng.random((2304, 2048)) * 50).astype(np.uint8)
    image[1000:1040, 2000:2040] = 220
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "large.png")
    script = (
        "import resource, runpy, sys; sys.argv = sys.argv[1:]; "
        'exec(\'try:\\n runpy.run_module("monai.bundle", run_name="__main__")\\nexcept SystemExit as e:\\n code = e.code\\nelse:\\n code = 0\'); '  # noqa: B950
        "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(code)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(tmp_path / "in"),
            "--output_dir",
            str(tmp_path / "out"),
            "--progress_bar",
            "False",
            "--ensemble",
            "False",
        ],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seg = Image.open(tmp_path / "out" / "large_seg.png")
    assert seg.size == (2048, 2304)
    peak = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert peak < 3000, peak


def test_new_training_starts_its_own_ensemble(tmp_path):
    from scripts.evaluation import reset_ensemble

    for name in ("model_key_metric=0.9.pt", "model_key_metric=0.8.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    reset_ensemble(str(tmp_path), resume=True)
    assert len(list(tmp_path.iterdir())) == 3  # a resumed training keeps its ensemble
    reset_ensemble(str(tmp_path), resume=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_finetune_without_weights_names_the_option_and_keeps_the_ensemble(tmp_path):
    earlier = tmp_path / "new" / "ensemble" / "model_key_metric=0.9.pt"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("x")
    proc = run_bundle(
        "run",
        "--config_file",
        "configs/train.json",
        "--finetune",
        "true",
        "--ckpt_dir",
        str(tmp_path / "new"),
        "--output_dir",
        str(tmp_path / "runs"),
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"--finetune true: no weights at finetune_model_path {tmp_path / 'new'}/model.pt" in proc.stderr
    assert "--finetune_model_path models/model.pt" in proc.stderr and earlier.is_file()


@pytest.mark.parametrize("ema_momentum", ["0", "0.5"])
def test_finetune_starts_from_given_weights(tmp_path, ema_momentum):
    """With --ema_momentum the saved weights are the average, which must start from the fine-tuned weights too."""
    shipped = BUNDLE / "models" / "model.pt"
    out = run_bundle(
        *_train_args(tmp_path, 1, fast=False),  # the shipped network, as MONAI Label's training fine-tunes it
        "--finetune",
        "True",
        "--finetune_model_path",
        str(shipped),
        "--learning_rate",
        "0.0",
        "--ema_momentum",
        ema_momentum,
        "--keep_epochs",
        "1",
    ).stdout
    assert f"Restored all variables from {shipped}" in out
    start = torch.load(shipped, map_location="cpu")
    tuned = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    weights = [k for k in start if k.endswith("conv.weight")]
    assert weights and all(torch.equal(start[k], tuned[k]) for k in weights)  # learning rate 0: unchanged
    # --keep_epochs: the epoch's validated weights (the average with --ema_momentum), in bfloat16
    kept = torch.load(tmp_path / "models" / "epochs" / "model_1.pt", map_location="cpu")
    assert set(kept) == set(tuned) and all(kept[k].dtype == torch.bfloat16 for k in weights)
    assert all(torch.equal(kept[k], tuned[k].to(torch.bfloat16)) for k in weights)


def test_state_saver_interval(tmp_path):
    """--checkpoint_interval k writes the full training state every k epochs and after the last one, and keeps the
    newest file only."""
    from ignite.engine import Engine, Events

    from scripts.handlers import TrainingStateSaver, latest_checkpoint

    net = torch.nn.Linear(2, 1)
    state = {"model": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}
    engine = Engine(lambda e, b: None)
    TrainingStateSaver(str(tmp_path), state, save_interval=2).attach(engine)
    written = []
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: written.append(sorted(p.name for p in tmp_path.iterdir()))
    )
    engine.run([0], max_epochs=5)
    assert written == [[], ["checkpoint_2.pt"], ["checkpoint_2.pt"], ["checkpoint_4.pt"], ["checkpoint_5.pt"]]
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_5.pt")
    with pytest.raises(ValueError, match="save_interval"):
        TrainingStateSaver(str(tmp_path), state, save_interval=0)


def test_epoch_weights_saver_keeps_the_last_epochs(tmp_path):
    """--keep_epochs n keeps the weights of the last n epochs in bfloat16, drops those of a run it restarted, and
    tools.average_weights --epochs_dir --last k picks the newest k by epoch (10 after 9)."""
    from ignite.engine import Engine, Events

    from scripts.handlers import EpochWeightsSaver, epoch_weights

    net = torch.nn.Linear(2, 1)
    torch.save({}, tmp_path / "model_9.pt")  # from an earlier run that went further
    engine = Engine(lambda e, b: None)
    EpochWeightsSaver(str(tmp_path), net, n_saved=3).attach(engine)
    written = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: written.append(sorted(os.listdir(tmp_path))))
    engine.run([0], max_epochs=4)
    assert written[0] == ["model_1.pt"]  # the stale epoch 9 is gone
    assert written[-1] == ["model_2.pt", "model_3.pt", "model_4.pt"]
    kept = torch.load(tmp_path / "model_4.pt")
    assert kept["weight"].dtype == torch.bfloat16 and torch.equal(kept["weight"], net.weight.detach().bfloat16())
    for epoch in (9, 10):
        torch.save({}, tmp_path / f"model_{epoch}.pt")
    assert [os.path.basename(f) for f in epoch_weights(str(tmp_path), last=2)] == ["model_9.pt", "model_10.pt"]
    with pytest.raises(ValueError, match="n_saved"):
        EpochWeightsSaver(str(tmp_path), net, n_saved=0)


def test_weight_ema_starts_at_training_start_warms_up_and_resumes(tmp_path, caplog):
    """WeightEMA: the average starts from the weights the network has when the trainer starts (after a fine-tune
    load), follows ema = (1 - m) * ema + m * weights with m = max(momentum, 9 / (10 + iteration)), and a resumed run
    keeps the average its checkpoint restored and its place in the warm-up."""
    from ignite.engine import Engine, Events

    from scripts.handlers import WeightEMA

    net = torch.nn.Linear(1, 1, bias=False)
    ema = WeightEMA(net, momentum=0.7)  # copies the weights at construction, as the config parser does

    def step(engine, batch):
        with torch.no_grad():
            net.weight += 1.0

    engine = Engine(step)
    engine.add_event_handler(Events.STARTED, lambda e: torch.nn.init.constant_(net.weight, 2.0))  # the fine-tune load
    ema.attach(engine)
    engine.run([0, 0], max_epochs=1)
    # weights 3, 4 after the two iterations, m = 9/11 then 0.75: ema 2 -> 2 + 9/11 -> 4 - (2 - 9/11) / 4
    m1 = 9 / 11
    first = 2 + m1
    assert float(ema.ema_model.weight) == pytest.approx(first + 0.75 * (4 - first))

    resumed = Engine(step)
    resumed.load_state_dict({"iteration": 20, "epoch_length": 2, "max_epochs": 11})
    ema.ema_model.weight.data.fill_(10.0)  # as restored from the checkpoint's ema_model
    net.weight.data.fill_(4.0)
    ema.attach(resumed)
    resumed.run([0, 0], max_epochs=11)
    # iterations 21, 22: 9/31 and 9/32 are below the momentum, so m = 0.7; weights 5, 6: ema 10 -> 6.5 -> 6.15
    assert float(ema.ema_model.weight) == pytest.approx(6.15)

    # a decay given as the momentum keeps almost no average: the log says so and what to give instead
    with caplog.at_level("WARNING", logger="scripts.handlers"):
        WeightEMA(net, momentum=0.995)
    assert "--ema_momentum 0.005" in caplog.text
