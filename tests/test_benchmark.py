"""The benchmark runs the configured training step, inference modes and data loading on a tiny network and prints
one JSON line with the documented keys."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from conftest import REPO, SAMPLE, run_module
from scripts.networks import R2AttUNet
from tools.benchmark import _train_overrides, training_gflop

pytestmark = pytest.mark.slow  # the whole module runs the bundle in subprocesses


def run_benchmark(*args: str) -> tuple[list[dict], dict]:
    proc = run_module("tools.benchmark", *args, cwd=REPO, timeout=300)
    lines = proc.stdout.strip().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], json.loads(lines[-1])


def test_train_benchmark_json_with_baseline():
    tiny = ["--channels", "[4,8,16]", "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1"]
    modes, last = run_benchmark("train", *tiny, "--baseline", "true", "--memory_saving", "true")
    assert [m["mode"] for m in modes[:2]] == ["baseline", "fast"]
    keys = (
        "images_per_s",
        "peak_rss_mb",
        "device",
        "s_per_step",
        "cpu_s_per_step",
        "gflop_per_step",
        "gflop_per_s",
        "speedup",
        "speedup_min",
        "speedup_cpu",
        "memory_ratio",
    )
    for key in keys:
        assert key in last, key
    assert last["images_per_s"] > 0 and last["peak_rss_mb"] > 0
    assert last["memory_saving"] is True and last["channels"] == [4, 8, 16] and last["size"] == [32, 32]
    # the baseline is plain fp32 eager training of the same network, measured in its own process
    base = modes[0]
    assert base["precision"] == "fp32" and base["memory_format"] == "contiguous_format"
    assert base["memory_saving"] is False and base["compile"] is False
    assert last["speedup"] == pytest.approx(last["images_per_s"] / last["baseline"]["images_per_s"], rel=1e-2)
    assert last["speedup_cpu"] == pytest.approx(base["cpu_s_per_step"] / last["cpu_s_per_step"], rel=1e-2)
    assert last["gflop_per_step"] == pytest.approx(
        training_gflop(**{"network_def#channels": [4, 8, 16], "patch_size": [32, 32], "batch_size": 2}), rel=1e-2
    )
    if torch.cuda.is_available():
        assert "peak_cuda_mb" in last


def test_contiguous_baseline_changes_only_the_memory_format():
    """``--baseline contiguous`` times the configured mode (precision, memory saving) in the contiguous layout, so its
    ratio is channels-last's alone; ``--baseline true`` is plain fp32 eager."""
    args = ([4, 8], 32, 2, "bf16", True, None)
    fast = _train_overrides(*args, False, None)
    contiguous = _train_overrides(*args, "contiguous", None)
    assert "memory_format" not in fast and fast["precision"] == "bf16" and fast["memory_saving"] is True
    assert contiguous == {**fast, "memory_format": "$torch.contiguous_format"}
    plain = _train_overrides(*args, True, None)
    assert plain["precision"] == "fp32" and plain["memory_saving"] is False and plain["keep_freed_memory"] is False


def test_training_gflop_scales_with_batch_and_counts_backward():
    one = training_gflop(**{"network_def#channels": [4, 8, 16], "patch_size": [32, 32], "batch_size": 1})
    two = training_gflop(**{"network_def#channels": [4, 8, 16], "patch_size": [32, 32], "batch_size": 2})
    assert two == pytest.approx(2 * one, rel=1e-6)
    # the first 3x3 convolution alone: 4 output channels x 9 taps x 4 input channels x 32 x 32 MACs in the forward
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16))
    assert one > 2 * sum(p.numel() for p in net.parameters() if p.ndim == 4) * 32 * 32 / 16 / 1e9


def test_infer_benchmark_compares_modes():
    _, last = run_benchmark(
        "infer", "--channels", "[4,8,16]", "--size", "32", "--batch", "2", "--image_size", "[80,100]", "--repeats", "1"
    )
    assert last["weights"] is None  # random weights for a network other than the shipped one
    modes = [k for k, v in last.items() if isinstance(v, dict)]
    assert "eager_fp32" in modes and "torchscript_fp32" in modes and any(m.startswith("autocast_") for m in modes)
    for mode in modes:
        assert last[mode]["patch_images_per_s"] > 0 and last[mode]["large_image_s"] > 0
    assert last["eager_fp32"]["max_prob_diff"] == 0
    assert last["torchscript_fp32"]["max_prob_diff"] < 1e-3
    if "onnxruntime_fp32" in modes:
        assert last["onnxruntime_fp32"]["max_prob_diff"] < 1e-3


def test_data_benchmark_reports_loading_share():
    _, last = run_benchmark(
        "data",
        "--dataset_dir",
        str(SAMPLE),
        "--limit",
        "8",
        "--epochs",
        "1",
        "--channels",
        "[4,8,16]",
        "--num_workers",
        "0",
    )
    assert last["images"] == 8 and last["epochs"] == 1 and len(last["epoch_s"]) == 1
    assert 0 < last["data_share"] < 1 and last["data_wait_s"] > 0 and last["compute_s"] > 0


def test_conv_benchmark_levels_side_by_side():
    levels, last = run_benchmark("conv", "--channels", "[4,8]", "--size", "32", "--batch", "2", "--repeats", "1")
    assert [row["channels"] for row in last["levels"]] == [4, 8] and levels[:2] == last["levels"]
    assert [row["size"] for row in last["levels"]] == [32, 16]
    for row in last["levels"]:
        assert row["gflop"] == pytest.approx(3 * 2 * 2 * row["channels"] ** 2 * 9 * row["size"] ** 2 / 1e9, abs=1e-3)
        assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["fast_ms"], rel=0.02)
    assert {"device", "precision", "speedup", "speedup_channels_last", "speedup_dtype"} <= set(last)


def test_modes_benchmark_rounds_and_release_row(tmp_path):
    """``modes`` runs every row once per round (medians), the floor too, and ``--release`` puts a release's own
    bundle (here this commit's, from a git worktree) first, on the same images."""
    args = ["--datalist", str(SAMPLE / "datalist.json"), "--key", "validation", "--limit", "2", "--repeats", "2"]
    args += ["--names", "['one network, whole images (default)']", "--release", "HEAD", "--out", str(tmp_path)]
    try:
        proc = run_module("tools.benchmark", "modes", *args, cwd=REPO, check=False)
    finally:  # the worktree is registered in the repository: remove it with its folder
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp_path / "release_HEAD")], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    result = json.loads(out[out.index("{\n") :])
    release, default = "release HEAD, its own defaults and weights", "one network, whole images (default)"
    assert result["images"] == 2 and (tmp_path / "out_release_HEAD__its_own_defaults_and_weights").is_dir()
    for name in (release, default):
        row = result[name]
        assert len(row["seconds_every_round"]) == 2 and row["seconds"] in row["seconds_every_round"]
        assert 0 < row["startup_seconds"] < row["seconds"] and 0.5 < row["pooled_dice"] <= 1
    assert result[release]["speedup_vs_first"] == 1.0 and result["plain fp32 forward per window (s)"] > 0
    assert result[default]["pooled_dice"] == pytest.approx(result[release]["pooled_dice"])  # the same code
