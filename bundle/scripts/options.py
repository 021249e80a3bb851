"""The bundle's command-line options: listed with their defaults (``python -m scripts.options [config ...]``) and
checked when a run starts, so that a mistyped option stops ``monai.bundle run`` at once instead of running on the
defaults.

Every top-level id of the run's config files is an option (``--dataset_dir``, ``--num_epochs``...); nested ids are
options too (``--network_def#channels``), and so are new arguments of a component (``--train#trainer#amp``).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["MEANINGS", "config_ids", "unknown_options", "check_command_line", "describe"]

# one line of meaning for the options users set most; the defaults are read from the configs
MEANINGS = {
    "dataset_dir": "input folder: a prepared dataset with datalist.json (training), or images to segment (inference)",
    "output_dir": "where inference writes its masks, objects and pictures; training its TensorBoard logs",
    "ckpt_dir": "folder of the weights: model.pt and ensemble/ (training writes there, inference reads there)",
    "datalist": "the datalist JSON (default: <dataset_dir>/datalist.json)",
    "num_epochs": "number of training epochs",
    "learning_rate": "initial learning rate (NAdam; halved when the validation Dice stalls)",
    "batch_size": "training batch size",
    "patch_size": "training patch and sliding-window size",
    "val_interval": "validate every N epochs (and after the last one)",
    "precision": "auto (bf16/fp16 where the device has it, else fp32), bf16, fp16 or fp32",
    "ensemble": "inference/evaluation: average <ckpt_dir>/ensemble (models/nuclei_fast has one) instead of model.pt",
    "tta": "test-time flips: true averages the 8 flips and transposes of the input, a number n the first n (2, 4)",
    "fold_batch_norm": "inference: fold BatchNorm into the convolutions after loading the weights (same result, faster)",
    "keep_freed_memory": "Linux: glibc malloc reuses freed memory instead of fresh pages (faster CPU passes)",
    "objects": "also answer with objects (instance labels, per-object CSV, counts): nuclei, EM neurons, mitochondria",
    "instance_method": "objects: nuclei (seeded watershed), neurons (membrane watershed + merge), components (3D)",
    "merge_threshold": "neurons: merge neighbouring segments whose shared boundary has a mean probability below this",
    "save_overlay": "inference: also write <name>_overlay.png, the image with the result drawn over it",
    "save_probabilities": "inference: also write <name>_prob.png, the probabilities",
    "threshold": "probability above which a pixel is foreground",
    "seeds": (
        "objects: what seeds one object each: auto (by the weights' channels: contact for 3, star with rays, else "
        "both), both (distance to the mask's edge + 8 x centre map), distance, centre, contact (mask x (1 - contact "
        "map), 3-channel weights), star (star-convex polygons, weights with rays)"
    ),
    "seed_threshold": (
        "objects, contact seeds: the mask x (1 - contact map) level above which a region seeds an object; star seeds: "
        "the centre-map level above which a pixel proposes a polygon"
    ),
    "rays": (
        "training: star-convex distance channels to learn (0: none; 32 for star seeds, out_channels 2 + rays); "
        "inference and evaluation read them from the weights"
    ),
    "contact": "training: learn the contact map between touching nuclei as output channel 2 (false: mask + centre)",
    "nms_threshold": "objects, star seeds: the overlap above which the less probable of two polygons is dropped",
    "seed_h": "objects: how much a peak of the seed landscape must rise to seed an object (higher splits less)",
    "seed_sigma": "objects: Gaussian smoothing (pixels) of the seed landscape",
    "min_object_size": "objects: drop objects (and their mask pixels) under this many pixels (0 keeps all)",
    "mask_erosion": "objects, components (em3d): thin each object by this many pixels in plane (0 keeps the mask)",
    "resume": "training: continue from the last training state in models/checkpoints",
    "finetune": "training: start from finetune_model_path instead of random weights",
    "finetune_model_path": "weights to fine-tune from (default <ckpt_dir>/model.pt)",
    "skip_bad_samples": "training: drop unreadable or mis-sized samples instead of stopping",
    "balance_groups": "training: draw rare image types more often (0 = uniform, 0.5 = square-root weighting)",
    "num_workers": "data-loading worker processes",
    "progress_bar": "show progress bars",
    "device": "torch device (default: the first GPU, else the CPU)",
    "eval_dir": "evaluation: where the metrics of the best checkpoint and the ensemble go",
    "stacks": "read multi-page TIFFs and NIfTI files as stacks or volumes (EM presets)",
    "ema_momentum": "training: average the weights, each step giving the newest this share (0.005: about 200 steps; 0 = off)",
    "keep_epochs": "training: keep the validated weights of the last n epochs in models/epochs (bf16), for averaging",
    "epochs_dir": "where --keep_epochs writes model_<epoch>.pt (default <ckpt_dir>/epochs)",
    "memory_saving": "training: recompute activations instead of storing them (less memory, slower)",
    "seed": "random seed",
    "val_fraction": "share of a plain datalist used for validation",
    "block_shape": "blocks.json: block size in the file's axes (default: about 8 windows a side, whole chunks)",
    "allow_missing_chunks": "blocks.json: read chunks missing from a zarr store as its fill value instead of stopping",
}

# what ``monai.bundle run`` itself takes besides config ids
RUN_ARGUMENTS = {"workflow_type", "workflow_name", "properties_path", "config_root_path"}


def _run_arguments() -> set[str]:
    """``monai.bundle run``'s own arguments and the ids its ``--tracking`` settings add (``experiment_name``...)."""
    from monai.bundle.scripts import run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    tracking = set(DEFAULT_MLFLOW_SETTINGS["configs"])
    return {p for p in inspect.signature(run).parameters if p != "override"} | RUN_ARGUMENTS | tracking


def _flatten(content: object, prefix: str = "") -> dict[str, object]:
    ids: dict[str, object] = {}
    if isinstance(content, dict):
        items = content.items()
    elif isinstance(content, list):
        items = ((str(i), v) for i, v in enumerate(content))
    else:
        return ids
    for key, value in items:
        name = f"{prefix}#{key}" if prefix else str(key)
        ids[name] = value
        ids.update(_flatten(value, name))
    return ids


def config_ids(config_files: Sequence[str]) -> dict[str, object]:
    """Every id (``a``, ``a#b``, ``a#0``...) of the merged config files, with its raw value."""
    from monai.bundle import ConfigParser

    return _flatten(ConfigParser.load_config_files(list(config_files)))


def _known(option: str, ids: dict[str, object]) -> bool:
    if option in ids:
        return True
    parent = option.rpartition("#")[0]
    return bool(parent) and isinstance(ids.get(parent), dict) and "_target_" in ids[parent]  # a component argument


def unknown_options(options: Sequence[str], config_files: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The options that no config file defines, each with the closest known ones."""
    ids = config_ids(config_files)
    allowed = _run_arguments()
    names = sorted(set(ids) | allowed)
    top = [n for n in names if "#" not in n]
    return [
        (option, difflib.get_close_matches(option, names if "#" in option else top, n=3, cutoff=0.6))
        for option in options
        if option not in allowed and not _known(option, ids)
    ]


def _command_line(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``(config files, option names)`` of a ``python -m monai.bundle run ...`` command line, else ``None``."""
    from scripts import bundle_run_command

    if not bundle_run_command(argv):
        return None
    options, configs = [], []
    for i, token in enumerate(argv[2:], start=2):
        if not token.startswith("--"):
            continue
        name, _, value = token[2:].partition("=")
        name = name.replace("-", "_") if name in ("config-file", "meta-file", "logging-file") else name
        options.append(name)
        if name == "config_file":
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            configs = [str(c) for c in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
    return configs, options


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Stop a ``monai.bundle run`` whose options name something no config file of the run defines (a typo would
    otherwise add an unused id and run on the defaults): an :class:`~scripts.InputError` naming the option and the
    closest known ones. Does nothing for other programs."""
    from scripts import InputError

    parsed = _command_line(sys.argv if argv is None else argv)
    if parsed is None or not parsed[0]:
        return
    configs, options = parsed
    if not all(os.path.isfile(c) for c in configs):
        return  # MONAI names the missing config file itself
    unknown = unknown_options(options, configs)
    if unknown:
        lines = [
            f"--{name}" + (f" (did you mean {', '.join('--' + m for m in close)}?)" if close else "")
            for name, close in unknown
        ]
        raise InputError(
            f"unknown option {'; '.join(lines)}: no config file of this run ({', '.join(configs)}) defines it; "
            "python -m scripts.options lists the options."
        )


def describe(config_files: Sequence[str]) -> str:
    """The options of the merged ``config_files`` that take a plain value: name, default, meaning."""
    ids = config_ids(config_files)
    rows = []
    for name, value in ids.items():
        if "#" in name or name in ("imports", "initialize", "run", "finalize") or isinstance(value, dict):
            continue
        if isinstance(value, list) and not all(isinstance(v, (int, float)) for v in value):
            continue
        default = json.dumps(value) if not isinstance(value, str) else value
        rows.append(f"  --{name:<22} {default:<40} {MEANINGS.get(name, '')}".rstrip())
    header = f"options of {' + '.join(config_files)} (override with --name value; nested ids with --a#b):"
    return "\n".join([header, *rows])


def main(*config_files: str) -> None:
    """Print the options of the given config files (default: configs/inference.json and configs/train.json)."""
    files = list(config_files) or ["configs/inference.json", "configs/train.json"]
    groups = [files] if config_files else [[f] for f in files]
    print("\n\n".join(describe(g) for g in groups))


if __name__ == "__main__":
    main(*sys.argv[1:])
