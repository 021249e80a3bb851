"""Speed and memory benchmarks of the bundle's training step, inference and data loading on the current device.

Run from the bundle root; each prints one JSON object as its last line::

    python -m tools.benchmark train --channels "[32,64,128,256,512]" --size 256 --batch 4 --steps 6 --baseline true
    python -m tools.benchmark infer --size 256 --batch 4
    python -m tools.benchmark data --dataset_dir /path/to/dsb2018 --limit 128
    python -m tools.benchmark gpu --train_images 539
    python -m tools.benchmark conv --channels "[32,64,128,256,512]" --size 256 --batch 4
    python -m tools.benchmark blocks --side 1024 --block 512 --throughput_side 4096

``train`` builds the trainer from ``configs/train.json`` with ``monai.bundle.ConfigParser`` (network, loss, optimizer,
mixed precision, memory format, ``memory_saving``, ``compile``, post-processing and the training metric, exactly as
configured) and feeds it synthetic batches, so only data loading and the epoch handlers (validation, logging) are
left out. It times ``steps`` iterations after ``warmup`` iterations. Each mode runs in a fresh subprocess, so its
``peak_rss_mb`` (``ru_maxrss``) and ``peak_cuda_mb`` are its own. ``--baseline true`` also times the same network
in plain fp32, contiguous memory, eager mode (no ``memory_saving``, no compile) in the same run;
``--baseline contiguous`` times the same mode in the contiguous memory format (channels-last's share alone).
``infer`` compares eager fp32, mixed precision, TorchScript and ONNX Runtime on a batch of patches and on one
large image through the sliding window of ``configs/inference.json``. ``data`` runs real training epochs (no
validation) and reports the share of time the trainer waits for batches (ignite's ``BasicTimeProfiler``). ``gpu``
is the prepared paper-configuration run for a GPU machine. ``conv`` times one 3x3 convolution of each level (forward
and backward) in plain fp32, fp32 channels-last and the configured mixed precision side by side: the ceiling that
the network's convolutions put on the training speed-up on this device.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

from scripts import quiet
from tools import BUNDLE  # noqa: E402

TRAIN_CONFIG = BUNDLE / "configs" / "train.json"
TRAIN_CONFIG_FILE = str(TRAIN_CONFIG)
INFERENCE_CONFIG = BUNDLE / "configs" / "inference.json"
INFERENCE_CONFIG_FILE = str(INFERENCE_CONFIG)
MODELS_DIR = str(BUNDLE / "models")

__all__ = ["train", "infer", "data", "gpu", "conv", "training_gflop"]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parser(config_file: str | os.PathLike, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(overrides)
    return parser


def _train_overrides(channels, size, batch, precision, memory_saving, compile, baseline, device) -> dict[str, Any]:
    overrides: dict[str, Any] = {"batch_size": int(batch)}
    if channels is not None:
        overrides["network_def#channels"] = [int(c) for c in channels]
    if size is not None:
        overrides["patch_size"] = [int(size)] * 2
    if device is not None:
        overrides["device"] = f"$torch.device({str(device)!r})"
    if baseline is True:  # plain fp32 eager
        overrides.update(
            {
                "precision": "fp32",
                "memory_format": "$torch.contiguous_format",
                "memory_saving": False,
                "compile": False,
                "keep_freed_memory": False,
            }
        )
        return overrides
    for key, value in (("precision", precision), ("memory_saving", memory_saving), ("compile", compile)):
        if value is not None:
            overrides[key] = value
    if baseline == "contiguous":  # the same mode, only the memory format changed
        overrides["memory_format"] = "$torch.contiguous_format"
    return overrides


def training_gflop(config_file: str | os.PathLike = TRAIN_CONFIG, **overrides: Any) -> float:
    """GFLOP (multiply and add counted as 2) of one forward and backward pass of ``network_def`` on a ``batch_size``
    batch of ``patch_size`` images, counted by ``torch.utils.flop_counter`` on the meta device (no memory used)."""
    from torch.utils.flop_counter import FlopCounterMode

    parser = _parser(config_file, overrides)
    with torch.device("meta"):
        net = parser.get_parsed_content("network_def", instantiate=True).train()
        patch = parser.get_parsed_content("patch_size")
        x = torch.empty(parser.get_parsed_content("batch_size"), net.encoder[0].proj.conv.in_channels, *patch)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / 1e9


def _train_worker(spec: str) -> None:
    """One mode of :func:`train`, in its own process; ``spec`` is a JSON object of :func:`train`'s arguments."""
    import ignite.engine

    args = json.loads(spec)
    overrides = _train_overrides(
        args["channels"],
        args["size"],
        args["batch"],
        args["precision"],
        args["memory_saving"],
        args["compile"],
        args["baseline"],
        args["device"],
    )
    parser = _parser(args["config_file"], overrides)
    parser.get_parsed_content("initialize")
    device = parser.get_parsed_content("device")
    patch = parser.get_parsed_content("patch_size")
    batch = parser.get_parsed_content("batch_size")
    gen = torch.Generator().manual_seed(0)
    in_channels = int(parser.get_parsed_content("network_def#in_channels"))
    out_channels = int(parser.get_parsed_content("network_def#out_channels"))
    batches = [
        {
            "image": torch.randn(batch, in_channels, *patch, generator=gen),
            "label": (torch.rand(batch, out_channels, *patch, generator=gen) > 0.7).float(),
        }
        for _ in range(2)
    ]
    warmup, steps = int(args["warmup"]), int(args["steps"])
    parser.update(
        {
            "train#trainer#train_data_loader": "$[@bench_batches[i % 2] for i in range(@bench_length)]",
            "train#trainer#epoch_length": warmup + steps,
            "train#trainer#max_epochs": 1,
            "train#trainer#train_handlers": [],
            "bench_batches": batches,
            "bench_length": warmup + steps,
        }
    )
    trainer = parser.get_parsed_content("train#trainer")
    times: list[float] = []
    cpu_times: list[float] = []  # process CPU time: robust to other processes sharing the cores (with 1 thread)

    @trainer.on(ignite.engine.Events.ITERATION_STARTED)
    def _start(engine) -> None:
        _sync(device)
        engine.state.bench_t0 = (time.perf_counter(), time.process_time())

    @trainer.on(ignite.engine.Events.ITERATION_COMPLETED)
    def _stop(engine) -> None:
        _sync(device)
        times.append(time.perf_counter() - engine.state.bench_t0[0])
        cpu_times.append(time.process_time() - engine.state.bench_t0[1])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    measured = times[warmup:]
    s_per_step = statistics.median(measured)
    from scripts.inferers import autocast_dtype

    dtype = autocast_dtype(device, parser.get_parsed_content("precision"))
    result = {
        "mode": "baseline" if args["baseline"] else "fast",
        "device": _device_name(device),
        "precision": _dtype_name(dtype),
        "memory_format": str(parser.get_parsed_content("memory_format")).replace("torch.", ""),
        "memory_saving": bool(parser.get_parsed_content("network_def#memory_saving")),
        "compile": bool(parser.get_parsed_content("train#trainer#compile")),
        "channels": net_def_channels(parser),
        "size": list(patch),
        "batch": batch,
        "steps": steps,
        "warmup_s": round(sum(times[:warmup]), 3),
        "s_per_step": round(s_per_step, 4),
        "s_per_step_min": round(min(measured), 4),
        "s_per_step_max": round(max(measured), 4),
        "images_per_s": round(batch / s_per_step, 3),
        "cpu_s_per_step": round(statistics.median(cpu_times[warmup:]), 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "load_avg": _load(),
        "final_loss": float(trainer.state.output[0]["loss"]) if isinstance(trainer.state.output, list) else None,
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(result), flush=True)


def _run_worker(function: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``tools.benchmark.<function>(spec)`` in a fresh Python process; return its last JSON line."""
    code = (
        f"import sys; sys.path.insert(0, {str(BUNDLE.parent)!r}); "
        f"from tools.benchmark import {function}; {function}(sys.argv[1])"
    )
    cmd = [sys.executable, "-c", code, json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {function} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train(
    channels: list[int] | None = None,
    size: int | None = None,
    batch: int = 4,
    steps: int = 6,
    warmup: int = 2,
    precision: str | None = None,
    memory_saving: bool | str | None = None,
    compile: bool | str | None = None,
    baseline: bool | str = False,
    device: str | None = None,
    config_file: str = TRAIN_CONFIG_FILE,
) -> dict[str, Any]:
    """Time the training step of ``config_file`` (default ``configs/train.json``) after ``warmup`` iterations.

    ``channels``, ``size``, ``batch``, ``precision``, ``memory_saving``, ``compile`` and ``device`` override the
    config (``None``: as configured). ``baseline``: also time plain fp32 eager training of the same network
    (``"contiguous"``: the same mode in the contiguous memory format, to measure the memory format alone), in its
    own process, and report ``speedup`` (images/s ratio of the median steps), ``speedup_min`` (ratio of the fastest
    steps, the least disturbed on a shared machine), ``speedup_cpu`` (ratio of the process CPU time per step: with
    ``OMP_NUM_THREADS=1``, the measure least affected by other processes) and ``memory_ratio`` (peak memory ratio).
    The last printed line is the fast mode's JSON with ``gflop_per_step`` and ``gflop_per_s`` added.
    """
    from scripts import as_bool

    spec = {
        "channels": channels,
        "size": size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "precision": precision,
        "device": device,
        "config_file": str(Path(config_file).resolve()),
        "memory_saving": None if memory_saving is None else as_bool(memory_saving),
        "compile": None if compile is None else as_bool(compile),
    }
    load_before = _load()
    gflop = training_gflop(config_file, **_train_overrides(channels, size, batch, None, False, None, False, device))
    results = {}
    base: bool | str = "contiguous" if str(baseline).lower() == "contiguous" else as_bool(baseline)
    for mode in (["baseline"] if base else []) + ["fast"]:
        results[mode] = r = _run_worker("_train_worker", {**spec, "baseline": base if mode == "baseline" else False})
        r["gflop_per_step"] = round(gflop, 3)
        r["gflop_per_s"] = round(gflop / r["s_per_step"], 1)
        r["gflop_per_cpu_s"] = round(gflop / r["cpu_s_per_step"], 1)
        print(json.dumps(r), flush=True)
    out = dict(results["fast"])
    out["load_avg_before"], out["load_avg_after"] = load_before, _load()
    if "baseline" in results:
        b = results["baseline"]
        keys = (
            "images_per_s",
            "s_per_step",
            "s_per_step_min",
            "cpu_s_per_step",
            "gflop_per_s",
            "peak_rss_mb",
            "peak_cuda_mb",
            "load_avg",
        )
        out["baseline"] = {k: b[k] for k in keys if k in b}
        out["speedup"] = round(out["images_per_s"] / b["images_per_s"], 3)
        out["speedup_min"] = round(b["s_per_step_min"] / out["s_per_step_min"], 3)  # fastest steps: least disturbed
        out["speedup_cpu"] = round(b["cpu_s_per_step"] / out["cpu_s_per_step"], 3)  # CPU time: with 1 thread
        key = "peak_cuda_mb" if "peak_cuda_mb" in out else "peak_rss_mb"
        out["memory_ratio"] = round(out[key] / b[key], 3)
    print(json.dumps(out), flush=True)
    return out


def _time(function, repeats: int, device: torch.device) -> float:
    """Median seconds of ``function()`` over ``repeats`` runs after one warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def infer(
    channels: list[int] | None = None,
    size: int = 256,
    batch: int = 4,
    image_size: tuple[int, int] = (1040, 1388),
    repeats: int = 3,
    weights: str | None = None,
    device: str | None = None,
    config_file: str = INFERENCE_CONFIG_FILE,
) -> dict[str, Any]:
    """Images/s of eager fp32, mixed precision (``AutocastInferer`` with the config's precision), TorchScript
    (frozen, fp32) and ONNX Runtime (fp32) on a ``batch`` of ``size`` x ``size`` patches and on one ``image_size``
    image through the sliding window of ``config_file``. ``weights``: a state_dict to load (default:
    ``models/model.pt`` when the network is the configured one, else random weights). Each mode also reports
    ``max_prob_diff`` (largest difference of sigmoid probabilities) and ``mask_diff`` (share of pixels whose
    thresholded mask differs) from eager fp32 on the large image.
    """
    from scripts.inferers import AutocastInferer, autocast_dtype

    overrides: dict[str, Any] = {}
    if channels is not None:
        overrides["network_def#channels"] = [int(c) for c in channels]
    if device is not None:
        overrides["device"] = f"$torch.device({str(device)!r})"
    parser = _parser(config_file, overrides)
    device = parser.get_parsed_content("device")
    memory_format = parser.get_parsed_content("memory_format")
    torch.manual_seed(0)  # random weights (a network other than the shipped one) as reproducible as the inputs
    net = parser.get_parsed_content("network_def").to(device, memory_format=memory_format).eval()
    weights = weights or (str(BUNDLE / "models" / "model.pt") if channels is None else None)
    if weights:
        net.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    window = parser.get_parsed_content("inferer#inferer")
    in_channels = net.encoder[0].proj.conv.in_channels
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(batch, in_channels, size, size, generator=gen).to(device, memory_format=memory_format)
    image = torch.randn(1, in_channels, *image_size, generator=gen).to(device, memory_format=memory_format)

    runners: dict[str, Any] = {}
    runners["eager_fp32"] = net
    precision = parser.get_parsed_content("precision")
    mixed = AutocastInferer(precision=precision)
    dtype = autocast_dtype(device, precision)
    runners[f"autocast_{_dtype_name(dtype)}"] = lambda x: mixed(x, net)
    with torch.no_grad():
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(net)))
    runners["torchscript_fp32"] = scripted
    notes = {}
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            torch.onnx.export(
                net.to(memory_format=torch.contiguous_format),
                (patches.contiguous(),),
                path,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("image", "logits")},
            )
            net.to(memory_format=memory_format)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
            providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
            session = ort.InferenceSession(path, options, providers=providers)

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {"image": x.detach().contiguous().cpu().numpy()})[0]
            return torch.from_numpy(out).to(x.device)

        runners["onnxruntime_fp32"] = run_onnx
        notes["onnxruntime_provider"] = session.get_providers()[0]
    except ImportError:
        notes["onnxruntime_fp32"] = "onnxruntime is not installed (pip install onnxruntime)"

    result: dict[str, Any] = {
        "device": _device_name(device),
        "channels": list(net_def_channels(parser)),
        "patch_batch": [batch, size, size],
        "image_size": list(image_size),
        "weights": weights,
        "threads": torch.get_num_threads(),
        "load_avg_before": _load(),
    }
    reference = None
    for name, run in runners.items():
        with torch.no_grad():
            s_patch = _time(lambda: run(patches), repeats, device)
            s_image = _time(lambda: window(image, run), repeats, device)
            prob = torch.sigmoid(window(image, run).float())
        if reference is None:
            reference = prob
        result[name] = {
            "patch_images_per_s": round(batch / s_patch, 3),
            "large_image_s": round(s_image, 3),
            "large_images_per_s": round(1 / s_image, 4),
            "max_prob_diff": round(float((prob - reference).abs().max()), 5),
            "mask_diff": round(float(((prob > 0.5) != (reference > 0.5)).float().mean()), 6),
        }
        print(json.dumps({name: result[name]}), flush=True)
    result.update(notes)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    result["load_avg_after"] = _load()
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(result), flush=True)
    return result


# the inference modes compared by ``modes``: name -> overrides of configs/inference.json; the rows named after a
# version run what it ran (0.6: channels-last on every CPU; 0.7 to 0.9: contiguous fp32 on CPUs without bf16; 0.9's
# seeds came from h-maxima of the whole image, 0.10's from each foreground region's: not an override)
INFERENCE_MODES = {
    "ensemble, windows (0.6 default)": {
        "ensemble": "True",
        "whole_image_max_pixels": "0",
        "memory_format": "$torch.channels_last",
        "fold_batch_norm": "False",
        "keep_freed_memory": "False",
    },
    "one network, windows": {"ensemble": "False", "whole_image_max_pixels": "0"},
    "one network, whole images, contiguous, BN unfolded, malloc as is (0.7 default)": {
        "ensemble": "False",
        "memory_format": "$torch.contiguous_format",
        "fold_batch_norm": "False",
        "keep_freed_memory": "False",
    },
    "one network, whole images, contiguous (0.9 default)": {
        "ensemble": "False",
        "memory_format": "$torch.contiguous_format",
    },
    "one network, whole images, no flips (0.11.0 default)": {"ensemble": "False", "tta": "0"},
    "one network, whole images (default)": {"ensemble": "False"},
    "ensemble, whole images": {"ensemble": "True"},
    "one network, whole images, 2 test-time flips": {"ensemble": "False", "tta": "2"},
    "one network, whole images, 4 test-time flips": {"ensemble": "False", "tta": "4"},
    "one network, whole images, 8 test-time flips": {"ensemble": "False", "tta": "True"},
    "one network, whole images, fp32, no flips": {"ensemble": "False", "tta": "0", "precision": "fp32"},
    "one network, whole images, fp32, 2 test-time flips": {"ensemble": "False", "tta": "2", "precision": "fp32"},
}


# monai.bundle in this process, then its peak resident memory (MB) as the last line
_PEAK_RSS = (
    "import resource, runpy, sys; sys.argv = ['monai.bundle', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\nexcept SystemExit as e:\n"
    "    if e.code not in (None, 0): raise\n"
    "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def _engine_seconds(log: str) -> float:
    """The evaluator's run time that ignite logs (``Engine run finished. Time taken: HH:MM:SS.mmm``): reading,
    segmenting and writing every image, without the start-up (imports, parsing, weights)."""
    import re

    found = re.findall(r"Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)", log)
    if not found:
        return float("nan")
    h, m, s = found[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def _split_inputs(datalist: str, key: str, limit: int | None, folder: Path) -> list[dict]:
    """Links to the ``key`` images of ``datalist`` in ``folder`` (inference.json reads a folder); their items."""
    from scripts.data import load_datalist

    items = load_datalist(datalist, key)[:limit]
    folder.mkdir(parents=True, exist_ok=True)
    for it in items:
        link = folder / Path(it["image"]).name
        if not link.exists():
            link.symlink_to(Path(it["image"]).resolve())
    return items


def _scores(items: list[dict], out: Path) -> dict[str, Any]:
    """Pooled Dice of the written masks (over all images and per image type, the items' ``group``) and DSB2018 score
    of the written instances against the labels (``scripts.report.score_predictions``; NaN without instances)."""
    from scripts.report import score_predictions

    scores = score_predictions(items, out)
    return {
        "pooled_dice": scores["all"]["pooled Dice"],
        "pooled_dice_by_type": {group: s["pooled Dice"] for group, s in scores.items()},
        "dsb_score": scores["all"].get("DSB score", float("nan")),
    }


def _plain_forward_s(items: list[dict], ckpt_dir: str, roi: int = 256, overlap: float = 0.25) -> float:
    """Seconds of the plain fp32 network (contiguous, no autocast) over the 256x256 windows of every image: the
    floor of a sliding-window segmenter."""
    from monai.data import Dataset
    from monai.inferers import SlidingWindowInferer

    overrides = {"memory_format": "$torch.contiguous_format", "bundle_root": str(BUNDLE), "ckpt_dir": str(ckpt_dir)}
    parser = _parser(INFERENCE_CONFIG, overrides)
    network = parser.get_parsed_content("network_def").eval()  # shaped as the weights in ckpt_dir need
    network.load_state_dict(torch.load(Path(ckpt_dir) / "model.pt", map_location="cpu", weights_only=True))
    inferer = SlidingWindowInferer((roi, roi), sw_batch_size=4, overlap=overlap, mode="gaussian")
    preprocessing = parser.get_parsed_content("preprocessing")
    seconds = 0.0
    for d in Dataset([{"image": it["image"]} for it in items], transform=preprocessing):
        start = time.perf_counter()
        with torch.no_grad():
            inferer(d["image"][None], network)
        seconds += time.perf_counter() - start
    return seconds


def _release_bundle(commit: str, root: Path) -> Path:
    """The ``bundle/`` folder of release ``commit`` of this repository, checked out once as a git worktree under
    ``root`` (its own configs, scripts and weights)."""
    tree = root / f"release_{commit}"
    if not (tree / "bundle" / "configs" / "inference.json").is_file():
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(tree), commit], cwd=BUNDLE, check=True)
    return tree / "bundle"


def _run_mode(
    name: str, root: Path, ckpt_dir: str, items: list[dict], megapixels: float, bundle: Path = BUNDLE
) -> dict[str, Any]:
    """One end-to-end ``configs/inference.json`` run of mode ``name`` (of :data:`INFERENCE_MODES`, or a release's
    bundle with its own weights and defaults) in a fresh process: its timings and scores."""
    target = root / ("out_" + "".join(c if c.isalnum() else "_" for c in name))
    args = [
        "--config_file",
        "configs/inference.json",
        "--logging_file",
        "configs/logging.conf",
        "--dataset_dir",
        str(root / "inputs"),
        "--output_dir",
        str(target),
        "--progress_bar",
        "False",
    ]
    if bundle == BUNDLE:
        args += ["--ckpt_dir", str(Path(ckpt_dir).resolve())]
        for k, v in INFERENCE_MODES[name].items():
            args += [f"--{k}", v]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, "run", *args], cwd=bundle, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    engine = _engine_seconds(proc.stdout + proc.stderr)
    return {
        "seconds": seconds,
        "engine_seconds": engine,
        "startup_seconds": seconds - engine,
        "images_per_s_after_startup": len(items) / engine,
        "images_per_s": len(items) / seconds,
        "s_per_megapixel": seconds / megapixels,
        "peak_rss_mb": float(proc.stdout.strip().splitlines()[-1].split()[-1]),
        **_scores(items, target),
    }


def modes(
    datalist: str,
    key: str = "validation",
    limit: int | None = None,
    ckpt_dir: str = MODELS_DIR,
    out: str = "runs/benchmark_modes",
    names: tuple = tuple(INFERENCE_MODES),
    repeats: int = 1,
    release: str | None = None,
) -> dict[str, Any]:
    """Times ``configs/inference.json`` end to end (start-up, read, segment, objects, write) in each of
    :data:`INFERENCE_MODES` side by side on the same images (the ``key`` split of ``datalist``), each in its own
    process: images/s, s/megapixel, peak resident memory, and the pooled Dice and DSB2018 score of what it wrote;
    then the plain fp32 forward pass over the 256x256 windows of the same images (the floor). ``repeats`` rounds
    run every mode and the floor once each, interleaved (so a slow spell of a shared machine hits every mode), and
    each reports its median round (of an even number, the faster middle one). ``release`` (a commit or tag of this
    repository, e.g. ``04606d0``, version 0.6.1) adds a first row: that release's own bundle (configs, code,
    weights) run with its defaults on the same images, from a git worktree under ``out``. Ratios are against the
    first row and against the floor."""
    from PIL import Image

    root = Path(out).resolve()
    items = _split_inputs(datalist, key, limit, root / "inputs")
    megapixels = sum(Image.open(it["image"]).size[0] * Image.open(it["image"]).size[1] for it in items) / 1e6
    results: dict[str, Any] = {"images": len(items), "megapixels": megapixels, "cpu": _device_name(torch.device("cpu"))}
    bundles = {name: BUNDLE for name in names}
    if release:
        names = (f"release {release}, its own defaults and weights", *names)
        bundles[names[0]] = _release_bundle(release, root)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    floors = []
    for r in range(int(repeats)):
        for name in names:
            rounds[name].append(_run_mode(name, root, ckpt_dir, items, megapixels, bundles[name]))
            print(json.dumps({name: rounds[name][-1], "round": r}), flush=True)
        floors.append(_plain_forward_s(items, ckpt_dir))
        print(json.dumps({"plain fp32 forward per window (s)": floors[-1], "round": r}), flush=True)
    for name in names:
        runs = sorted(rounds[name], key=lambda run: run["seconds"])
        results[name] = {**runs[(len(runs) - 1) // 2], "seconds_every_round": [run["seconds"] for run in rounds[name]]}
    results["plain fp32 forward per window (s)"] = sorted(floors)[(len(floors) - 1) // 2]
    first, first_engine = results[names[0]]["seconds"], results[names[0]]["engine_seconds"]
    for name in names:
        results[name]["speedup_vs_first"] = first / results[name]["seconds"]
        results[name]["speedup_vs_first_after_startup"] = first_engine / results[name]["engine_seconds"]
        results[name]["x_plain_forward"] = results[name]["seconds"] / results["plain fp32 forward per window (s)"]
    print(json.dumps(results, indent=1))
    return results


def net_def_channels(parser) -> list[int]:
    return [int(c) for c in parser.get_parsed_content("network_def#channels")]


def data(
    dataset_dir: str | None = None,
    limit: int | None = 128,
    epochs: int = 2,
    channels: list[int] | None = None,
    num_workers: int | None = None,
    config_file: str = TRAIN_CONFIG_FILE,
) -> dict[str, Any]:
    """Run ``epochs`` real training epochs of ``config_file`` (validation and logging handlers off) on the first
    ``limit`` training images of ``dataset_dir`` and report the share of time the trainer waits for batches
    (ignite's ``BasicTimeProfiler``: data flow vs processing), the cache build time and each epoch's time."""
    from ignite.engine import Events
    from ignite.handlers import BasicTimeProfiler

    overrides: dict[str, Any] = {"progress_bar": False}
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(dataset_dir)
    if channels is not None:
        overrides["network_def#channels"] = [int(c) for c in channels]
    if num_workers is not None:
        overrides["num_workers"] = int(num_workers)
    parser = _parser(config_file, overrides)
    parser.get_parsed_content("initialize")
    datalist = parser.get_parsed_content("train_datalist")
    parser.update(
        {"train_datalist": datalist[:limit] if limit else datalist, "train#handlers": [], "num_epochs": int(epochs)}
    )
    t0 = time.perf_counter()
    parser.get_parsed_content("train#dataset")
    cache_s = time.perf_counter() - t0
    trainer = parser.get_parsed_content("train#trainer")
    profiler = BasicTimeProfiler()
    profiler.attach(trainer)
    epoch_s: list[float] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_s.append(e.state.times["EPOCH_COMPLETED"]))
    load_before = _load()
    trainer.run()
    stats = profiler.get_results()
    wait = float(stats["dataflow_stats"]["total"])
    compute = float(stats["processing_stats"]["total"])
    result = {
        "device": _device_name(parser.get_parsed_content("device")),
        "images": len(datalist[:limit] if limit else datalist),
        "batch": parser.get_parsed_content("batch_size"),
        "num_workers": parser.get_parsed_content("num_workers"),
        "epochs": int(epochs),
        "cache_s": round(cache_s, 2),
        "epoch_s": [round(s, 2) for s in epoch_s],
        "data_wait_s": round(wait, 2),
        "compute_s": round(compute, 2),
        "data_share": round(wait / (wait + compute), 4),
        "load_avg_before": load_before,
        "load_avg_after": _load(),
    }
    print(json.dumps(result), flush=True)
    return result


def gpu(
    train_images: int | None = None,
    dataset_dir: str | None = None,
    epochs: int = 20,
    steps: int = 20,
    warmup: int = 5,
    channels: list[int] | None = None,
    batch: int | None = None,
    size: int = 256,
    image_size: tuple[int, int] = (1040, 1388),
    device: str | None = None,
) -> dict[str, Any]:
    """The prepared run for a GPU machine, at the paper's configuration (``configs/paper.json``: channels 64..1024,
    256x256, batch 4): the training step in plain fp32 and as train.json configures it (AMP), with
    ``memory_saving``, and inference. ``train_images`` (or the training split of ``dataset_dir``'s datalist) gives
    the estimate of ``epochs`` epochs: ``epochs * (train_images // batch) * s_per_step`` (validation excluded).
    ``device``: default the config's (the first GPU); any other device only to try the command out."""
    if device is None and not torch.cuda.is_available():
        raise RuntimeError("gpu: no CUDA device is visible to torch.")
    paper = json.loads((BUNDLE / "configs" / "paper.json").read_text())  # the preset, not a copy of it
    channels = list(channels) if channels is not None else paper["network_def#channels"]
    batch = int(batch) if batch is not None else paper["batch_size"]
    if train_images is None:
        if dataset_dir is None:
            raise ValueError("gpu: give --train_images (training split size) or --dataset_dir (with datalist.json).")
        parser = _parser(TRAIN_CONFIG, {"dataset_dir": str(dataset_dir)})
        train_images = len(parser.get_parsed_content("train_datalist"))
    common = {"channels": list(channels), "size": size, "batch": batch, "steps": steps, "warmup": warmup}
    common["device"] = device
    fast = train(**common, baseline=True)
    saving = train(**common, memory_saving=True)
    inference = infer(channels=list(channels), size=size, batch=batch, image_size=image_size, device=device)
    steps_per_epoch = int(train_images) // batch
    out = {
        "device": fast["device"],
        "channels": list(channels),
        "train_images": int(train_images),
        "fp32_s_per_step": fast["baseline"]["s_per_step"],
        "fp32_peak_cuda_mb": fast["baseline"].get("peak_cuda_mb"),
        "fp32_peak_rss_mb": fast["baseline"]["peak_rss_mb"],
        "amp_precision": fast["precision"],
        "amp_s_per_step": fast["s_per_step"],
        "amp_images_per_s": fast["images_per_s"],
        "amp_peak_cuda_mb": fast.get("peak_cuda_mb"),
        "speedup": fast["speedup"],
        "memory_saving_s_per_step": saving["s_per_step"],
        "memory_saving_peak_cuda_mb": saving.get("peak_cuda_mb"),
        f"{epochs}_epochs_h_fp32": round(epochs * steps_per_epoch * fast["baseline"]["s_per_step"] / 3600, 3),
        f"{epochs}_epochs_h_amp": round(epochs * steps_per_epoch * fast["s_per_step"] / 3600, 3),
        "infer_patch_images_per_s": {k: v["patch_images_per_s"] for k, v in inference.items() if isinstance(v, dict)},
    }
    print(json.dumps(out), flush=True)
    return out


def conv(
    channels: list[int] | None = None,
    size: int = 256,
    batch: int = 4,
    repeats: int = 5,
    precision: str = "auto",
    device: str | None = None,
) -> dict[str, Any]:
    """Forward + backward time of one 3x3 convolution per level (``channels[i]`` in and out, ``size / 2**i`` pixels
    a side, ``batch`` images; the recurrent units' convolution, which carries most of the network's FLOPs) in three
    modes side by side: ``fp32`` (contiguous, the baseline's), ``fp32_cl`` (channels-last) and ``fast``
    (channels-last under autocast with ``precision``'s dtype, see :func:`scripts.inferers.autocast_dtype`).
    Reports GFLOP/s per mode and level, the speed-up of ``fast`` over ``fp32`` per level, and over all levels
    weighted by their calls in R2AttU-Net (each level runs its 3x3 convolution 12 times a step, the deepest 6)."""
    from scripts.inferers import autocast_dtype

    device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    channels = [int(c) for c in (channels or [32, 64, 128, 256, 512])]
    dtype = autocast_dtype(device, precision)
    modes = {
        "fp32": (torch.contiguous_format, None),
        "fp32_cl": (torch.channels_last, None),
        "fast": (torch.channels_last, dtype),
    }
    levels, totals = [], dict.fromkeys(modes, 0.0)
    for level, c in enumerate(channels):
        side = max(size // 2**level, 1)
        gflop = 3 * 2 * batch * c * c * 9 * side * side / 1e9  # forward, grad input, grad weight
        row: dict[str, Any] = {"channels": c, "size": side, "gflop": round(gflop, 3)}
        for name, (memory_format, mode_dtype) in modes.items():
            layer = torch.nn.Conv2d(c, c, 3, padding=1).to(device, memory_format=memory_format)
            x = torch.randn(batch, c, side, side, device=device).to(memory_format=memory_format).requires_grad_()

            def forward(layer=layer, x=x, mode_dtype=mode_dtype) -> torch.Tensor:
                with torch.autocast(device.type, dtype=mode_dtype or torch.float32, enabled=mode_dtype is not None):
                    return layer(x)

            grad = torch.randn_like(forward())  # a dense gradient in the output's dtype and memory format

            def step(forward=forward, grad=grad) -> None:
                forward().backward(grad)

            seconds = _time(step, repeats, device)
            totals[name] += seconds * (0.5 if level == len(channels) - 1 else 1.0)
            row[f"{name}_ms"] = round(1e3 * seconds, 2)
            row[f"{name}_gflop_per_s"] = round(gflop / seconds, 1)
        row["speedup"] = round(row["fp32_ms"] / row["fast_ms"], 3)
        levels.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "device": _device_name(device),
        "precision": _dtype_name(dtype),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "levels": levels,
        "speedup": round(totals["fp32"] / totals["fast"], 3),
        "speedup_channels_last": round(totals["fp32"] / totals["fp32_cl"], 3),
        "speedup_dtype": round(totals["fp32_cl"] / totals["fast"], 3),
    }
    print(json.dumps(out), flush=True)
    return out


def _tiled_slide(path: Path, side: tuple[int, int], chunks: int = 256) -> None:
    """A uint8 zarr 'slide' of ``side`` pixels tiled from the shipped sample's images (flipped copies), chunked."""
    import zarr
    from PIL import Image

    files = sorted((BUNDLE / "sample_data" / "dsb2018" / "images").glob("*.png"))
    tiles = []
    for k, f in enumerate(files):
        a = np.asarray(Image.open(f).convert("L"))
        a = np.pad(a, ((0, max(0, 256 - a.shape[0])), (0, max(0, 256 - a.shape[1]))), "reflect")[:256, :256]
        tiles += [a, a[::-1], a[:, ::-1]] if k % 2 else [a.T, a]
    z = zarr.create_array(str(path), shape=side, chunks=(chunks, chunks), dtype="uint8", overwrite=True)
    rows = []
    for r in range(0, side[0], 256):
        row = [tiles[(r // 256 * 7 + c // 256) % len(tiles)] for c in range(0, side[1], 256)]
        rows.append(np.concatenate(row, axis=1))
    z[:] = np.concatenate(rows, axis=0)[: side[0], : side[1]]


def _blocks_worker(spec: str) -> None:
    """One block-wise run in this fresh process (configs merged as a user merges them); prints seconds and peak RSS."""
    s = json.loads(spec)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in s["configs"]])
    parser.update(s["overrides"])
    run = parser.get_parsed_content("blocks")
    start = time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}))


def blocks(
    side: int = 1024,
    block: int = 512,
    scales: tuple = (1, 4, 16),
    throughput_side: int = 4096,
    configs: tuple = ("inference.json", "blocks.json"),
    objects: bool = True,
    work_dir: str = "/tmp/r2attunet_blocks_benchmark",
) -> dict:
    """Block-wise inference (``configs/blocks.json``) on slides tiled from the shipped sample, each run in a fresh
    process: peak resident memory and voxels per second on slides of ``scales`` times ``side`` x ``side`` pixels
    with ``block`` x ``block`` blocks (memory bounded by the block, not the slide), then on one slide of
    ``throughput_side`` pixels the time per voxel of the default blocks against one block over the whole slide
    (whole-image inference: the same windows, one region), side by side."""
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict[str, Any] = {"device": _device_name(torch.device("cpu")), "load_before": _load(), "memory": []}

    def one(name: str, n: tuple[int, int], block_shape: list | None) -> dict:
        _tiled_slide(work / "in" / name / "slide.zarr", n)
        overrides = {"dataset_dir": str(work / "in" / name), "output_dir": str(work / "out" / name)}
        overrides.update({"block_shape": block_shape, "objects": objects, "progress_bar": False})
        r = _run_worker("_blocks_worker", {"configs": list(configs), "overrides": overrides})
        r["pixels"] = n[0] * n[1]
        r["megapixels_per_s"] = round(r["pixels"] / r["seconds"] / 1e6, 4)
        return r

    for scale in scales:
        n = (int(round(side * math.sqrt(scale))),) * 2
        r = one(f"x{scale}", n, [block, block])
        result["memory"].append({"scale": scale, "shape": list(n), **{k: round(v, 2) for k, v in r.items()}})
    base = result["memory"][0]["peak_rss_mb"]
    result["peak_rss_ratio_largest_to_smallest"] = round(result["memory"][-1]["peak_rss_mb"] / base, 3)
    n = (throughput_side, throughput_side)
    whole, default = one("whole", n, list(n)), one("default", n, None)
    result["throughput"] = {"shape": list(n), "whole_image": whole, "default_blocks": default}
    result["blocks_time_per_voxel_ratio"] = round(default["seconds"] / whole["seconds"], 3)
    result["load_after"] = _load()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    fire.Fire(
        {
            name: quiet(f)
            for name, f in (
                ("train", train),
                ("infer", infer),
                ("modes", modes),
                ("data", data),
                ("gpu", gpu),
                ("conv", conv),
                ("blocks", blocks),
            )
        }
    )
