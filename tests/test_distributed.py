"""torchrun with PyTorch distributed on CPU (gloo): the Model Zoo multi-GPU configs on the shipped sample."""

from pathlib import Path

import pytest
import torch

from conftest import BUNDLE, NUCLEI_FAST, run_bundle

pytestmark = pytest.mark.slow  # the whole module runs the bundle in subprocesses


def torchrun(*args: str, nproc: int = 2) -> str:
    """``torchrun ... -m monai.bundle run <args>``: the output of its ``nproc`` processes."""
    proc = run_bundle("run", *args, nproc=nproc)
    return proc.stdout + proc.stderr


def test_torchrun_train_and_evaluate(tmp_path: Path):
    models = tmp_path / "models"
    out = torchrun(
        "--config_file",
        "['configs/train.json','configs/multi_gpu_train.json']",
        "--logging_file",
        "configs/logging.conf",
        "--num_epochs",
        "1",
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--ema_momentum",
        "0.5",
        # from the shipped weights: from scratch, one step an epoch validates at Dice 0.0000 twice, and two
        # checkpoints of the same score share one ensemble file name
        "--finetune",
        "True",
        "--finetune_model_path",
        "models/nuclei_fast/model.pt",
        *NUCLEI_FAST,
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(tmp_path / "runs"),
    )
    assert "process 0 of 2 on cpu, backend gloo" in out and "process 1 of 2 on cpu, backend gloo" in out
    # 8 training images, batch 4, split over 2 processes by the DistributedSampler: one iteration each
    assert "Epoch: 1/1, Iter: 1/1" in out and "Iter: 1/2" not in out
    assert out.count("Epoch: 1/1, Iter: 1/1 -- train_loss") == 1  # only rank 0 logs
    assert out.count("SupervisedTrainer - INFO - Engine run resuming") == 1
    state = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
    assert len(list((models / "ensemble").glob("model_key_metric=*.pt"))) == 1
    assert [p.name for p in (models / "checkpoints").glob("*.pt")] == ["checkpoint_1.pt"]
    # the weight average (--ema_momentum) of the unwrapped network is saved and kept in the training state
    assert "ema_model" in torch.load(models / "checkpoints" / "checkpoint_1.pt", weights_only=False)

    # resume under torchrun: every process restores the state, training continues at epoch 2
    out = torchrun(
        "--config_file",
        "['configs/train.json','configs/multi_gpu_train.json']",
        "--logging_file",
        "configs/logging.conf",
        "--num_epochs",
        "2",
        "--num_workers",
        "0",
        "--progress_bar",
        "False",
        "--resume",
        "True",
        "--ema_momentum",
        "0.5",
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(tmp_path / "runs"),
        *NUCLEI_FAST,
    )
    # only rank 0 logs; had rank 1 not resumed too, it would run epoch 1 alone and the collectives would not match
    assert out.count("resuming training from") == 1
    assert "Epoch: 2/2, Iter: 1/1" in out and "Epoch: 1/2" not in out
    assert [p.name for p in (models / "checkpoints").glob("*.pt")] == ["checkpoint_2.pt"]
    assert len(list((models / "ensemble").glob("model_key_metric=*.pt"))) == 2  # the ensemble grew, not restarted

    out = torchrun(
        "--config_file",
        "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']",
        "--logging_file",
        "configs/logging.conf",
        "--num_workers",
        "0",
        "--ckpt_dir",
        str(models),
        "--eval_dir",
        str(tmp_path / "eval"),
    )
    rows = (tmp_path / "eval" / "best" / "val_mean_dice_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # every validation image, gathered from both processes


def test_torchrun_inference_splits_the_images(tmp_path: Path):
    """multi_gpu_inference.json: each process segments its share of the images, every image exactly once, and the
    shared summary.csv holds every image (its updates are locked)."""
    out_dir = tmp_path / "out"
    out = torchrun(
        "--config_file",
        "['configs/inference.json','configs/multi_gpu_inference.json']",
        "--logging_file",
        "configs/logging.conf",
        "--output_dir",
        str(out_dir),
        "--progress_bar",
        "false",
    )
    images = sorted(p.stem for p in (BUNDLE / "sample_data" / "dsb2018" / "images").glob("*.png"))
    assert "process 1 of 2 on cpu, backend gloo" in out
    assert sorted(p.name[: -len("_seg.png")] for p in out_dir.glob("*_seg.png")) == images
    assert sorted(p.name[: -len("_instances.png")] for p in out_dir.glob("*_instances.png")) == images
    rows = (out_dir / "summary.csv").read_text().strip().splitlines()
    assert rows[0] == "image,objects" and sorted(r.split(",")[0][: -len(".png")] for r in rows[1:]) == images


def test_helpers_outside_a_process_group():
    from scripts.distributed import device_ids, other_rank, process_device, rank, rank_handlers

    assert rank() == 0 and not other_rank()  # no group: this process is rank 0
    assert rank_handlers(["stop", "validate", "log"], keep=2) == ["stop", "validate", "log"]
    assert rank_handlers(None) is None
    assert device_ids(torch.device("cpu")) is None and device_ids(torch.device("cuda:1")) == [torch.device("cuda:1")]
    assert process_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_rank_handlers_on_other_ranks(monkeypatch):
    import scripts.distributed as distributed

    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.rank_handlers(["stop", "validate", "log"], keep=2) == ["stop", "validate"]
    assert distributed.rank_handlers(["log"]) is None and distributed.other_rank()
