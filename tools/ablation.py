"""The paper's ablation tables, rerun through the bundle's own configs.

- Table 1: 19 loss and hyper-parameter settings (Focal Tversky, Tversky, Dice, BCE, BCE+Dice) with R2AttU-Net on
  DSB2018.
- Table 2: network variants (R2AttU-Net, recurrent attention U-Net, R2U-Net, plus an attention U-Net and a plain
  U-Net as baselines the paper lacks) with the Focal Tversky loss (alpha 0.3, beta 0.7, gamma 0.75) on DSB2018 and
  ISBI 2012.

Each row and seed is one ``python -m monai.bundle run`` of ``configs/train.json`` and one of
``configs/train.json + configs/evaluate.json`` (best checkpoint only, ``--ensemble false``) with command-line
overrides, in a subprocess; a row whose ``result.json`` exists is skipped, so an interrupted run resumes row by row.
Training uses a seeded stratified subset of the datalist's ``training`` split (a few images of it held out to pick
the best checkpoint); scores come from its ``validation`` split, which training never sees.

``python -m tools.ablation --table 1 [--scale cpu|paper] [--seeds "[0,1]"] [--out runs/ablation] [--docs docs]``

writes ``<docs>/ablation_table<N>.csv`` (one line per row and seed), ``<docs>/ablation_table<N>.md`` (ours, mean and
standard deviation over seeds, beside the paper's numbers, and a Wilcoxon signed-rank test across validation images
of the winner against the runner-up) and ``<docs>/figures/ablation_table<N>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import fire
import numpy as np

from scripts.files import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "Row",
    "Scale",
    "SCALES",
    "VARIANTS",
    "TABLE1",
    "TABLE2",
    "DATASETS",
    "table_rows",
    "row_overrides",
    "score",
    "subset_datalist",
    "read_eval",
    "run_row",
    "aggregate",
    "paired_test",
    "comparisons",
    "implied_foreground_share",
    "write_csv",
    "markdown_table",
    "plot_table",
    "main",
]

logger = logging.getLogger(__name__)

from tools import BUNDLE  # noqa: E402

# the paper's metric columns, as named in the bundle's evaluate.json
METRICS = {
    "dice": "val_mean_dice",
    "pooled_dice": "val_pooled_dice",
    "precision": "val_precision",
    "recall": "val_recall",
    "accuracy": "val_accuracy",
    "roc_auc": "val_roc_auc",
    "kappa": "val_cohen_kappa",
}
# ISBI 2012: the bundle segments the membrane (foreground 255); the paper scores the cell interior as foreground
INTERIOR_METRICS = {
    "dice": "val_interior_mean_dice",
    "pooled_dice": "val_interior_pooled_dice",
    "precision": "val_interior_precision",
    "recall": "val_interior_recall",
}
MEMBRANE_METRICS = {f"membrane_{k}": METRICS[k] for k in ("dice", "pooled_dice", "precision", "recall")}
FTL = {"alpha": 0.3, "beta": 0.7, "gamma": 0.75}  # the paper's choice


@dataclass(frozen=True)
class Row:
    """One setting: a loss (a key of train.json's ``losses``) with its parameters, a network variant (a key of
    :data:`VARIANTS`), a dataset (a key of :data:`DATASETS`) and the paper's numbers (``None``: not in the paper)."""

    loss: str
    params: dict = field(default_factory=dict)
    variant: str = "r2attunet"
    dataset: str = "dsb2018"
    paper: dict | None = None

    @property
    def key(self) -> str:
        """Folder name; equal settings share a folder (and a run) across tables."""
        p = "".join(f"_{k[0]}{v:g}" for k, v in sorted(self.params.items()))
        return f"{self.variant}_{self.loss}{p}"

    @property
    def loss_label(self) -> str:
        names = {
            "focal_tversky": "Focal Tversky",
            "tversky": "Tversky",
            "dice": "Dice",
            "bce": "BCE",
            "bce_dice": "BCE + Dice",
        }
        sym = {"alpha": "α", "beta": "β", "gamma": "γ"}
        p = ", ".join(f"{sym[k]}={self.params[k]:g}" for k in ("alpha", "beta", "gamma") if k in self.params)
        return f"{names[self.loss]} {p}".strip()


def _paper(values: tuple, names: tuple = ("dice", "precision", "recall", "accuracy", "roc_auc", "kappa")) -> dict:
    return dict(zip(names, values, strict=False))


def _ft(a: float, b: float, g: float) -> dict:
    return {"alpha": a, "beta": b, "gamma": g}


# Table 1 of the paper, in its order: R2AttU-Net on DSB2018 ("one-fold cross validation" on 30 held-out images)
TABLE1: list[Row] = [
    Row("focal_tversky", _ft(0.4, 0.6, 0.75), paper=_paper((0.71, 0.74, 0.78, 0.91, 0.86, 0.67))),
    Row("focal_tversky", _ft(0.3, 0.7, 0.75), paper=_paper((0.75, 0.79, 0.81, 0.92, 0.88, 0.73))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.75), paper=_paper((0.65, 0.74, 0.63, 0.88, 0.78, 0.59))),
    Row("focal_tversky", _ft(0.3, 0.7, 0.80), paper=_paper((0.72, 0.79, 0.74, 0.91, 0.84, 0.67))),
    Row("focal_tversky", _ft(0.3, 0.7, 0.90), paper=_paper((0.58, 0.75, 0.50, 0.82, 0.71, 0.48))),
    Row("focal_tversky", _ft(0.3, 0.7, 0.65), paper=_paper((0.67, 0.67, 0.76, 0.90, 0.84, 0.62))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.65), paper=_paper((0.71, 0.81, 0.66, 0.90, 0.81, 0.65))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.55), paper=_paper((0.73, 0.84, 0.71, 0.91, 0.83, 0.68))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.45), paper=_paper((0.52, 0.79, 0.41, 0.71, 0.66, 0.38))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.50), paper=_paper((0.45, 0.81, 0.33, 0.59, 0.59, 0.26))),
    Row("focal_tversky", _ft(0.2, 0.8, 0.85), paper=_paper((0.32, 0.88, 0.20, 0.39, 0.51, 0.09))),
    Row("focal_tversky", _ft(0.4, 0.6, 0.85), paper=_paper((0.72, 0.73, 0.79, 0.91, 0.86, 0.69))),
    Row("focal_tversky", _ft(0.4, 0.6, 0.65), paper=_paper((0.51, 0.68, 0.43, 0.76, 0.67, 0.38))),
    Row("dice", paper=_paper((0.51, 0.46, 0.76, 0.88, 0.83, 0.47))),
    Row("bce_dice", paper=_paper((0.50, 0.70, 0.41, 0.79, 0.67, 0.40))),
    Row("tversky", {"alpha": 0.2, "beta": 0.8}, paper=_paper((0.72, 0.84, 0.68, 0.90, 0.82, 0.65))),
    Row("tversky", {"alpha": 0.3, "beta": 0.7}, paper=_paper((0.71, 0.75, 0.74, 0.90, 0.84, 0.67))),
    Row("tversky", {"alpha": 0.4, "beta": 0.6}, paper=_paper((0.57, 0.54, 0.82, 0.89, 0.86, 0.53))),
    Row("bce", paper=_paper((0.67, 0.74, 0.65, 0.88, 0.79, 0.60))),
]

# network_def switches of each variant
VARIANTS: dict[str, tuple[str, dict]] = {
    "r2attunet": (
        "R2AttU-Net (recurrent residual + attention)",
        {"recurrent": True, "residual": True, "attention": True},
    ),
    "rattunet": ("Recurrent U-Net + attention", {"recurrent": True, "residual": False, "attention": True}),
    "r2unet": ("R2U-Net (recurrent residual)", {"recurrent": True, "residual": True, "attention": False}),
    "attunet": ("Attention U-Net (not in the paper)", {"recurrent": False, "residual": False, "attention": True}),
    "unet": ("U-Net (not in the paper)", {"recurrent": False, "residual": False, "attention": False}),
}

_T2 = ("dice", "precision", "recall", "accuracy", "roc_auc")
_T2_PAPER = {
    ("r2attunet", "dsb2018"): (0.82, 0.93, 0.76, 0.94, 0.87),
    ("r2attunet", "isbi2012"): (0.86, 0.99, 0.76, 0.81, 0.88),  # the text says ROC AUC 0.99, the table 0.88
    ("rattunet", "dsb2018"): (0.79, 0.89, 0.72, 0.93, 0.84),
    ("rattunet", "isbi2012"): (0.83, 0.98, 0.71, 0.75, 0.85),
    ("r2unet", "dsb2018"): (0.77, 0.94, 0.67, 0.91, 0.83),
    ("r2unet", "isbi2012"): (0.83, 0.99, 0.71, 0.74, 0.85),
}
# Table 2 of the paper (test images) and the two baselines, all with the Focal Tversky loss (0.3, 0.7, 0.75)
TABLE2: list[Row] = [
    Row(
        "focal_tversky",
        dict(FTL),
        variant=v,
        dataset=d,
        paper=_paper(_T2_PAPER[(v, d)], _T2) if (v, d) in _T2_PAPER else None,
    )
    for d in ("dsb2018", "isbi2012")
    for v in VARIANTS
]


@dataclass(frozen=True)
class Scale:
    """Training scale. ``train_images``: DSB2018 training images drawn (stratified by image type) from the
    datalist's ``training`` split, ``None`` for all; ``select_images`` of them (``em_select_images`` of the ISBI 2012
    slices) are held out to pick the best checkpoint. ``num_epochs``/``em_epochs``: DSB2018/ISBI 2012 epochs.
    ``infer_roi``: DSB2018 sliding-window size at validation (a larger window than the training patch is faster;
    ISBI 2012 keeps em2d.json's inferer). ``em_batch_size`` x ``em_samples_per_image``: ISBI 2012 patches per step
    (the scale the published tables ran at, below em2d.json's GPU-sized 2 x 8)."""

    channels: tuple = (8, 16, 32, 64, 128)
    patch_size: tuple = (128, 128)
    infer_roi: tuple = (256, 256)
    num_epochs: int = 5
    em_epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 4
    train_images: int | None = 80
    select_images: int = 8
    em_select_images: int = 2
    em_batch_size: int = 1
    em_samples_per_image: int = 4
    num_workers: int = 0


PAPER = json.loads((BUNDLE / "configs" / "paper.json").read_text())  # the paper's configuration, as the preset has it
SCALES = {
    # fits a shared 2-core CPU: both tables (28 settings) with 2 seeds took 47 minutes, 2 rows at a time
    "cpu": Scale(),
    # the paper's (configs/paper.json: channels 64..1024, 20 epochs, batch 4, lr 1e-4) at 256x256, all training
    # images (30 held out)
    "paper": Scale(
        channels=tuple(PAPER["network_def#channels"]),
        patch_size=(256, 256),
        infer_roi=(256, 256),
        num_epochs=PAPER["num_epochs"],
        em_epochs=PAPER["num_epochs"],
        learning_rate=PAPER["learning_rate"],
        batch_size=PAPER["batch_size"],
        train_images=None,
        select_images=30,
        num_workers=2,
    ),
}

# dataset -> (default datalist, extra configs for training, extra configs for evaluation)
DATASETS: dict[str, tuple[str, list[str], list[str]]] = {
    "dsb2018": (str(BUNDLE / "data" / "dsb2018" / "datalist.json"), [], []),
    "isbi2012": (
        str(BUNDLE / "data" / "isbi2012" / "prepared" / "datalist.json"),
        ["configs/em2d.json"],
        ["configs/em2d.json"],
    ),
}


def table_rows(table: int) -> list[Row]:
    """The rows of Table ``table`` (1 or 2)."""
    if table not in (1, 2):
        raise ValueError(f"table must be 1 or 2, got {table}.")
    return TABLE1 if table == 1 else TABLE2


def row_overrides(row: Row, scale: Scale, seed: int) -> list[str]:
    """``monai.bundle run`` arguments that set ``row``'s loss and network at ``scale`` with ``seed``."""
    # the paper's ablations score pixel masks: one output channel, no objects (as the EM presets)
    args = [
        "--loss",
        f"@losses#{row.loss}",
        "--objects",
        "False",
        "--object_metrics",
        "{}",
        "--network_def#out_channels",
        "1",
        "--contact",
        "False",
        "--ema_momentum",
        "0.0",  # the paper's training: no weight average, no balance of image types (train.json's defaults have both)
        "--balance_groups",
        "0.0",
    ]
    for k, v in sorted(row.params.items()):
        args += [f"--losses#{row.loss}#{k}", repr(float(v))]
    for k, v in VARIANTS[row.variant][1].items():
        args += [f"--network_def#{k}", str(bool(v))]  # "True"/"False": fire reads "false" as a string
    args += [
        "--network_def#channels",
        json.dumps(list(scale.channels)),
        "--patch_size",
        json.dumps(list(scale.patch_size)),
        "--learning_rate",
        repr(float(scale.learning_rate)),
        "--num_epochs",
        str(scale.em_epochs if row.dataset == "isbi2012" else scale.num_epochs),
        "--val_interval",
        "1",
        "--num_workers",
        str(scale.num_workers),
        "--seed",
        str(int(seed)),
        "--progress_bar",
        "false",
    ]
    if row.dataset != "isbi2012":  # em2d.json draws several patches per image and has its own inferer
        args += [
            "--batch_size",
            str(scale.batch_size),
            "--validate#inferer#inferer#inferer#roi_size",
            json.dumps(list(scale.infer_roi)),
        ]
    else:
        args += ["--batch_size", str(scale.em_batch_size), "--samples_per_image", str(scale.em_samples_per_image)]
    return args


def _stratified_draw(items: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """Exactly ``n`` of ``items`` at random, each ``group`` in proportion to its size (largest remainders), in the
    items' order."""
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.get("group", "all"), []).append(i)
    names = sorted(groups)
    quota = np.array([n * len(groups[g]) / len(items) for g in names])
    take = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[j] += 1
    chosen = {int(i) for g, k in zip(names, take, strict=False) for i in rng.permutation(groups[g])[:k]}
    return [it for i, it in enumerate(items) if i in chosen]


def subset_datalist(
    datalist: str | os.PathLike, out_dir: str | os.PathLike, n_train: int | None, n_select: int, seed: int = 0
) -> tuple[Path, Path]:
    """Draw ``n_train`` images (all with ``None``) from ``datalist``'s ``training`` split, stratified by ``group`` and
    seeded, and hold ``n_select`` of them out to pick the best checkpoint. Writes, with absolute paths,
    ``out_dir/train_datalist.json`` (``training``: the rest, ``validation``: the held-out images) and
    ``out_dir/eval_datalist.json`` (``training``: the same, ``validation``: the datalist's ``validation`` split,
    never trained on) and returns both paths."""
    from scripts.data import load_datalist

    items = load_datalist(datalist, "training")
    evaluation = load_datalist(datalist, "validation")
    n_train = len(items) if n_train is None else min(int(n_train), len(items))
    if not 0 < n_select < n_train:
        raise ValueError(f"{datalist}: {n_select} held-out images must be between 0 and the {n_train} drawn.")
    rng = np.random.default_rng(seed)
    drawn = _stratified_draw(items, n_train, rng)
    select = _stratified_draw(drawn, n_select, rng)
    fit = [it for it in drawn if it not in select]
    out_dir = Path(out_dir)
    train_file, eval_file = out_dir / "train_datalist.json", out_dir / "eval_datalist.json"
    write_json_atomic({"training": fit, "validation": select}, train_file)
    write_json_atomic({"training": fit, "validation": evaluation}, eval_file)
    return train_file, eval_file


def _run(cmd: list[str], log: Path, env: dict) -> float:
    """Run ``cmd`` from the bundle root with its output in ``log``; returns the seconds it took."""
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=BUNDLE, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; log {log}:\n{tail}")
    return time.time() - start


def _interior_config(path: Path) -> Path:
    """A config that adds the cell-interior (complement of the membrane) scores to evaluate.json's metrics."""
    complement = "$scripts.evaluation.complement(['pred', 'label'])"
    metrics = {
        f"validate#additional_metrics#{INTERIOR_METRICS[name]}": {
            "_target_": "ConfusionMatrix",
            "include_background": True,
            "metric_name": metric,
            "compute_sample": False,
            "output_transform": complement,
        }
        for name, metric in (("pooled_dice", "f1 score"), ("precision", "precision"), ("recall", "sensitivity"))
    }
    metrics[f"validate#additional_metrics#{INTERIOR_METRICS['dice']}"] = {
        "_target_": "MeanDice",
        "include_background": True,
        "output_transform": complement,
    }
    write_json_atomic(metrics, path)
    return path


def read_eval(eval_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(metrics, per-image Dice)`` from the MetricsSaver output of evaluate.json in ``eval_dir``
    (``metrics.csv`` and ``val_mean_dice_raw.csv``)."""
    eval_dir = Path(eval_dir)
    metrics = {}
    for line in (eval_dir / "metrics.csv").read_text().splitlines():
        if line.strip():
            name, value = line.rsplit(",", 1) if "," in line else line.split("\t")
            metrics[name.strip()] = float(value)
    per_image = {}
    with open(eval_dir / "val_mean_dice_raw.csv") as f:
        for r in csv.DictReader(f):
            per_image[Path(r["filename"]).name] = float(r["mean"])
    return metrics, per_image


def run_row(
    row: Row,
    seed: int,
    scale: Scale,
    datalists: tuple[str | os.PathLike, str | os.PathLike],
    out: str | os.PathLike,
    python: str = sys.executable,
) -> dict:
    """Train on ``datalists[0]`` and evaluate on ``datalists[1]`` (see :func:`subset_datalist`) ``row`` with ``seed``
    under ``out/<dataset>/<row.key>/seed<seed>`` unless its ``result.json`` exists; returns the result (scores,
    per-image Dice of the bundle's foreground, seconds)."""
    row_dir = Path(out) / row.dataset / row.key / f"seed{seed}"
    result_file = row_dir / "result.json"
    done = row_dir / "train_done.json"
    this_scale = json.loads(json.dumps(asdict(scale)))
    for f in (result_file, done):
        if f.is_file() and json.loads(f.read_text())["scale"] != this_scale:
            raise ValueError(f"{f} was made at another scale than {this_scale}: use another --out or remove {row_dir}.")
    if result_file.is_file():
        return json.loads(result_file.read_text())
    row_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    _, train_configs, eval_configs = DATASETS[row.dataset]
    common = row_overrides(row, scale, seed) + [
        "--ckpt_dir",
        str((row_dir / "models").resolve()),
        "--output_dir",
        str((row_dir / "runs").resolve()),
    ]
    mb = [python, "-m", "monai.bundle", "run", "--config_file"]
    train_cmd = (
        mb
        + [json.dumps(["configs/train.json", *train_configs])]
        + common
        + ["--datalist", str(Path(datalists[0]).resolve())]
    )
    if not done.is_file():  # resume: a finished training is not repeated when only evaluation failed
        train_s = _run(train_cmd, row_dir / "train.log", env)
        write_json_atomic({"seconds": train_s, "scale": this_scale}, done)
    train_s = json.loads(done.read_text())["seconds"]
    configs = ["configs/train.json", "configs/evaluate.json", *eval_configs]
    if row.dataset == "isbi2012":
        configs.append(str(_interior_config(row_dir / "interior_metrics.json").resolve()))
    eval_dir = (row_dir / "eval").resolve()
    eval_cmd = (
        mb
        + [json.dumps(configs)]
        + common
        + ["--datalist", str(Path(datalists[1]).resolve()), "--ensemble", "false", "--eval_dir", str(eval_dir)]
    )
    eval_s = _run(eval_cmd, row_dir / "eval.log", env)
    metrics, per_image = read_eval(eval_dir / "best")
    groups: dict[str, list[float]] = {}
    for it in json.loads(Path(datalists[1]).read_text())["validation"]:
        name = Path(it["image"]).name
        if "group" in it and name in per_image:
            groups.setdefault(it["group"], []).append(per_image[name])
    result = {
        "key": row.key,
        "dataset": row.dataset,
        "seed": seed,
        "scale": asdict(scale),
        "metrics": metrics,
        "per_image_dice": per_image,
        "group_dice": {g: float(np.mean(v)) for g, v in sorted(groups.items())},
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "train_command": train_cmd,
        "eval_command": eval_cmd,
    }
    write_json_atomic(result, result_file)
    return json.loads(result_file.read_text())


def score(result: dict, name: str) -> float:
    """Score ``name`` (a key of :data:`METRICS` or :data:`MEMBRANE_METRICS`) of one run. For ISBI 2012, ``dice``,
    ``pooled_dice``, ``precision`` and ``recall`` are the cell interior's (the paper's foreground), ``membrane_*``
    the bundle's own foreground; for DSB2018 ``membrane_*`` is not defined (nan)."""
    m = result["metrics"]
    if name in MEMBRANE_METRICS:
        return m[MEMBRANE_METRICS[name]] if result["dataset"] == "isbi2012" else float("nan")
    if result["dataset"] == "isbi2012" and name in INTERIOR_METRICS:
        return m.get(INTERIOR_METRICS[name], float("nan"))
    return m.get(METRICS[name], float("nan"))


def aggregate(rows: list[Row], results: dict) -> list[dict]:
    """Per row: ``(mean, sd)`` over seeds of each score (see :func:`score`), the per-seed values under ``"seeds"``
    and ``rank_dice``, the mean per-image Dice of the bundle's foreground used to rank rows. ``results``:
    ``{(row.key, dataset): [result of each seed]}``."""
    table = []
    for row in rows:
        runs = results.get((row.key, row.dataset), [])
        entry: dict = {"row": row, "n_seeds": len(runs), "seeds": {}}
        for name in [*METRICS, *MEMBRANE_METRICS]:
            vals = [score(r, name) for r in runs]
            entry["seeds"][name] = vals
            entry[name] = (
                (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"))
                if vals
                else (float("nan"), float("nan"))
            )
        entry["rank_dice"] = float(np.mean([r["metrics"]["val_mean_dice"] for r in runs])) if runs else float("nan")
        groups = sorted({g for r in runs for g in r.get("group_dice", {})})
        entry["group_dice"] = {
            g: float(np.mean([r["group_dice"][g] for r in runs if g in r.get("group_dice", {})])) for g in groups
        }
        entry["minutes"] = sum(r["train_seconds"] + r["eval_seconds"] for r in runs) / 60
        table.append(entry)
    return table


def _mean_per_image(runs: list[dict]) -> dict:
    files = sorted(set.intersection(*(set(r["per_image_dice"]) for r in runs)))
    return {f: float(np.mean([r["per_image_dice"][f] for r in runs])) for f in files}


def paired_test(a: dict, b: dict) -> dict:
    """Two-sided Wilcoxon signed-rank test of per-image scores ``a`` against ``b`` (``{image: score}``, paired by
    image): ``n``, mean difference ``a - b``, images where ``a`` wins, ``p``."""
    from scipy.stats import wilcoxon

    files = sorted(set(a) & set(b))
    if not files:
        raise ValueError("no common images to pair.")
    d = np.array([a[f] - b[f] for f in files])
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"n": len(files), "mean_diff": float(d.mean()), "wins": int((d > 0).sum()), "p": p}


def implied_foreground_share(precision: float, recall: float, accuracy: float) -> float:
    """The foreground share of pixels that pooled ``precision``, ``recall`` and ``accuracy`` imply together:
    with share ``p``, ``FN = p (1 - R)`` and ``FP = p R (1 / P - 1)``, so ``p = (1 - A) / ((1 - R) + R (1 / P - 1))``.
    A check of a table's internal consistency: rows scored on the same images should imply about the same share."""
    errors_per_share = (1 - recall) + recall * (1 / precision - 1)
    return float("nan") if errors_per_share <= 0 else (1 - accuracy) / errors_per_share


def _fmt(v: tuple[float, float] | None) -> str:
    if v is None or np.isnan(v[0]):
        return "–"
    return f"{v[0]:.3f}" if np.isnan(v[1]) else f"{v[0]:.3f} ± {v[1]:.3f}"


def write_csv(table: int, results: dict, path: str | os.PathLike) -> None:
    """One line per row and seed with every score, the mean Dice per image type (``group``) and the seconds
    it took."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [*METRICS, *MEMBRANE_METRICS]
    runs = [r for row in table_rows(table) for r in results.get((row.key, row.dataset), [])]
    groups = sorted({g for r in runs for g in r.get("group_dice", {})})
    w.writerow(
        [
            "table",
            "dataset",
            "network",
            "loss",
            "alpha",
            "beta",
            "gamma",
            "seed",
            *names,
            *(f"dice_{g}" for g in groups),
            "train_seconds",
            "eval_seconds",
        ]
    )
    for row in table_rows(table):
        for r in sorted(results.get((row.key, row.dataset), []), key=lambda r: r["seed"]):
            vals = [score(r, n) for n in names] + [r.get("group_dice", {}).get(g, np.nan) for g in groups]
            w.writerow(
                [
                    table,
                    row.dataset,
                    row.variant,
                    row.loss,
                    *(row.params.get(k, "") for k in ("alpha", "beta", "gamma")),
                    r["seed"],
                    *("" if np.isnan(v) else f"{v:.4f}" for v in vals),
                    r["train_seconds"],
                    r["eval_seconds"],
                ]
            )
    write_text_atomic(buf.getvalue(), path)


def comparisons(table: int, agg: list[dict], results: dict) -> list[tuple[str, str, dict, dict, dict]]:
    """Paired tests per dataset, ranking the rows that have results by the mean per-image Dice of the bundle's
    foreground (the score the test pairs across images, averaged over seeds): the winner against the runner-up,
    and the paper's pick (Table 1: Focal Tversky 0.3/0.7/0.75; Table 2: R2AttU-Net) against the winner (Table 1) or
    the plain U-Net (Table 2), unless that is the same pair. Returns ``(dataset, what, row a, row b, test of a - b)``.
    """
    out = []
    for ds in dict.fromkeys(e["row"].dataset for e in agg):
        done = sorted((e for e in agg if e["row"].dataset == ds and e["n_seeds"]), key=lambda e: -e["rank_dice"])
        if len(done) < 2:
            continue
        per = {e["row"].key: _mean_per_image(results[(e["row"].key, ds)]) for e in done}

        def test(a: dict, b: dict) -> dict:
            seeds_a = {r["seed"]: r["metrics"]["val_mean_dice"] for r in results[(a["row"].key, ds)]}
            seeds_b = {r["seed"]: r["metrics"]["val_mean_dice"] for r in results[(b["row"].key, ds)]}
            by_seed = [seeds_a[s] - seeds_b[s] for s in sorted(set(seeds_a) & set(seeds_b))]
            return {**paired_test(per[a["row"].key], per[b["row"].key]), "seed_diffs": by_seed}

        out.append((ds, "winner vs runner-up", done[0], done[1], test(done[0], done[1])))
        pick = next(
            (
                e
                for e in done
                if (e["row"].params == FTL and e["row"].variant == "r2attunet") and e["row"].loss == "focal_tversky"
            ),
            None,
        )
        other = done[0] if table == 1 else next((e for e in done if e["row"].variant == "unet"), None)
        same = {id(pick), id(other)} == {id(done[0]), id(done[1])}  # already tested as winner vs runner-up
        if pick is not None and other is not None and other is not pick and not same:
            out.append(
                (ds, "paper's pick vs " + ("winner" if other is done[0] else "U-Net"), pick, other, test(pick, other))
            )
    return out


def markdown_table(table: int, agg: list[dict], results: dict) -> str:
    """The table in markdown: ours (mean ± sd over seeds) beside the paper's numbers, then the paired test."""
    cols = ["dice", "precision", "recall", "accuracy", "roc_auc"] + (["kappa"] if table == 1 else [])
    head = {
        "dice": "Dice",
        "precision": "precision",
        "recall": "recall",
        "accuracy": "accuracy",
        "roc_auc": "ROC AUC",
        "kappa": "Cohen κ",
        "membrane_dice": "membrane Dice",
        "membrane_precision": "membrane precision",
        "membrane_recall": "membrane recall",
    }
    extra = ["pooled_dice"] + (["membrane_dice", "membrane_precision", "membrane_recall"] if table == 2 else [])
    head["pooled_dice"] = "pooled Dice"
    groups = sorted({g for e in agg for g in e.get("group_dice", {})})
    lines = []
    first = "| loss |" if table == 1 else "| dataset | network |"
    lines.append(
        first
        + " seeds |"
        + "".join(f" {head[c]} (ours) | {head[c]} (paper) |" for c in cols)
        + "".join(f" {head[c]} (ours) |" for c in extra)
        + (f" Dice per type: {' / '.join(groups)} (ours) |" if groups else "")
        + " foreground share implied (paper) |"
    )
    lines.append("|" + "---|" * (first.count("|") - 1 + 1 + 2 * len(cols) + len(extra) + bool(groups) + 1))
    for e in agg:
        row = e["row"]
        lead = f"| {row.loss_label} |" if table == 1 else f"| {row.dataset} | {VARIANTS[row.variant][0]} |"
        paper = row.paper or {}
        cells = "".join(f" {_fmt(e[c])} | {paper[c]:.2f} |" if c in paper else f" {_fmt(e[c])} | – |" for c in cols)
        implied = (
            f"{implied_foreground_share(paper['precision'], paper['recall'], paper['accuracy']):.2f}" if paper else "–"
        )
        per_type = (
            (
                " "
                + " / ".join(f"{e['group_dice'][g]:.2f}" if g in e.get("group_dice", {}) else "–" for g in groups)
                + " |"
            )
            if groups
            else ""
        )
        lines.append(
            f"{lead} {e['n_seeds']} |{cells}" + "".join(f" {_fmt(e[c])} |" for c in extra) + per_type + f" {implied} |"
        )
    lines.append("")
    lines.append(
        "Ours: mean ± standard deviation over seeds. Dice: mean per-image Dice; pooled Dice, precision, "
        "recall, accuracy: over all pixels of the validation split; ROC AUC over all pixels' probabilities."
        + (
            " ISBI 2012: Dice, pooled Dice, precision and recall score the cell interior (the complement of"
            " the bundle's membrane foreground), as the paper's numbers do; the membrane columns score the"
            " bundle's own foreground. Accuracy and ROC AUC are the same either way."
            if table == 2
            else ""
        )
        + " Foreground share implied: the share of foreground pixels for which the paper's precision, recall"
        " and accuracy would be pooled counts of one confusion matrix (see `implied_foreground_share`)."
        + (
            " Dice per type: mean per-image Dice of each image type of the validation split, over seeds."
            if groups
            else ""
        )
    )
    lines.append("")
    lines.append(
        "Paired tests: two-sided Wilcoxon signed-rank across validation images of the per-image Dice of the"
        " bundle's foreground (nuclei; ISBI 2012: membrane), averaged over seeds; rows ranked by its mean."
        " The test treats images, not trainings, as the samples: the seed-by-seed differences show whether"
        " the lead survives the training's randomness."
    )
    lines.append("")
    name = (lambda e: e["row"].loss_label) if table == 1 else (lambda e: VARIANTS[e["row"].variant][0].split(" (")[0])
    for ds, what, a, b, t in comparisons(table, agg, results):
        lines.append(
            f"- {ds}, {what}: **{name(a)}** ({a['rank_dice']:.3f}) vs {name(b)} ({b['rank_dice']:.3f}): mean "
            f"difference {t['mean_diff']:+.3f}, better on {t['wins']}/{t['n']} images, p = {t['p']:.3g}; "
            f"difference of mean Dice seed by seed: {' / '.join(f'{d:+.3f}' for d in t['seed_diffs'])}."
        )
    return "\n".join(lines) + "\n"


def plot_table(table: int, agg: list[dict], path: str | os.PathLike) -> None:
    """Per dataset: a bar chart of Dice per row (ours: mean over seeds, each seed a dot; paper: hatched bars) and
    precision against recall of every row (ours and the paper's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(e["row"].dataset for e in agg))
    n_rows = max(len([e for e in agg if e["row"].dataset == ds]) for ds in datasets)
    fig, axes = plt.subplots(
        len(datasets),
        2,
        figsize=(max(6.0, 0.45 * n_rows + 2) + 4, 4.8 * len(datasets)),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(3, n_rows // 3), 2]},
    )
    for (ax, pr), ds in zip(axes, datasets, strict=False):
        rows = [e for e in agg if e["row"].dataset == ds]
        x = np.arange(len(rows))
        ours = [e["dice"][0] for e in rows]
        paper = [(e["row"].paper or {}).get("dice", np.nan) for e in rows]
        ax.bar(x - 0.2, ours, 0.4, label="ours (mean Dice; dots: seeds)", color="tab:blue")
        ax.bar(x + 0.2, paper, 0.4, label="paper (Dice)", color="white", edgecolor="tab:orange", hatch="//")
        for i, e in enumerate(rows):
            seeds = e["seeds"]["dice"]
            ax.plot([i - 0.2] * len(seeds), seeds, "k.", ms=4)
        labels = [e["row"].loss_label if table == 1 else VARIANTS[e["row"].variant][0].split(" (")[0] for e in rows]
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(f"Table {table}: {ds}" + (" (cell interior)" if ds == "isbi2012" else ""))
        ax.legend(fontsize=7, loc="lower left")
        for e, _label in zip(rows, labels, strict=False):
            paper_row = e["row"].paper or {}
            pr.plot(e["recall"][0], e["precision"][0], "o", color="tab:blue", ms=5)
            if "precision" in paper_row:
                pr.plot(paper_row["recall"], paper_row["precision"], "s", color="tab:orange", mfc="none", ms=5)
                pr.plot(
                    [e["recall"][0], paper_row["recall"]],
                    [e["precision"][0], paper_row["precision"]],
                    "-",
                    color="0.8",
                    lw=0.7,
                    zorder=0,
                )
        pr.plot([0, 1], [0, 1], "k:", lw=0.8)
        pr.plot([], [], "o", color="tab:blue", label="ours")
        pr.plot([], [], "s", color="tab:orange", mfc="none", label="paper (same row joined)")
        pr.set_xlim(0, 1)
        pr.set_ylim(0, 1)
        pr.set_xlabel("recall")
        pr.set_ylabel("precision")
        pr.set_title("precision vs recall" + (" (cell interior)" if ds == "isbi2012" else ""))
        pr.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(
    table: int,
    scale: str = "cpu",
    seeds: list[int] | tuple[int, ...] = (0, 1),
    out: str = "runs/ablation",
    docs: str = "docs",
    dsb_datalist: str = DATASETS["dsb2018"][0],
    isbi_datalist: str = DATASETS["isbi2012"][0],
    workers: int = 1,
    rows: list[int] | None = None,
    **scale_overrides,
) -> None:
    """Run Table ``table`` (1 or 2) at ``scale`` (``cpu`` or ``paper``; fields of :class:`Scale` such as
    ``--num_epochs`` override it) for ``seeds``, ``workers`` rows at a time, then write the CSV, the markdown table
    and the plot under ``docs``. ``rows``: indices of the rows to run (default all)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}.")
    sc = replace(
        SCALES[scale], **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in scale_overrides.items()}
    )
    all_rows = table_rows(table)
    todo = all_rows if rows is None else [all_rows[i] for i in rows]
    out_dir = Path(out) / scale
    sources = {"dsb2018": dsb_datalist, "isbi2012": isbi_datalist}
    datalists = {
        ds: subset_datalist(
            sources[ds], out_dir / ds, sc.train_images, sc.em_select_images if ds == "isbi2012" else sc.select_images
        )
        for ds in dict.fromkeys(r.dataset for r in todo)
    }
    jobs = [(r, s) for s in seeds for r in todo]

    def one(job: tuple[Row, int]) -> dict:
        r, s = job
        res = run_row(r, s, sc, datalists[r.dataset], out_dir)
        logger.info(
            "%s %s seed %d: Dice %.4f (train %.0f s, eval %.0f s)",
            r.dataset,
            r.key,
            s,
            res["metrics"]["val_mean_dice"],
            res["train_seconds"],
            res["eval_seconds"],
        )
        return res

    results: dict = {}
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        futures = {pool.submit(one, j): j for j in jobs}
        for fut, (r, s) in futures.items():
            try:
                results.setdefault((r.key, r.dataset), []).append(fut.result())
            except Exception as e:  # keep the other rows; the failed one is rerun next time
                failures.append(f"{r.dataset} {r.key} seed {s}: {e}")
                logger.error("%s %s seed %d failed: %s", r.dataset, r.key, s, e)
    # rows finished by earlier runs (e.g. other seeds) also count
    for r in all_rows:
        for s in seeds:
            f = out_dir / r.dataset / r.key / f"seed{s}" / "result.json"
            got = results.setdefault((r.key, r.dataset), [])
            if f.is_file() and all(x["seed"] != s for x in got):
                got.append(json.loads(f.read_text()))
    agg = aggregate(all_rows, results)
    docs_dir = Path(docs)
    write_csv(table, results, docs_dir / f"ablation_table{table}.csv")
    write_text_atomic(markdown_table(table, agg, results), docs_dir / f"ablation_table{table}.md")
    plot_table(table, agg, docs_dir / "figures" / f"ablation_table{table}.png")
    missing = [f"{e['row'].dataset} {e['row'].key}" for e in agg if e["n_seeds"] < len(seeds)]
    logger.info("table %d: %d/%d rows complete; written to %s", table, len(agg) - len(missing), len(agg), docs_dir)
    if missing:
        logger.warning("rows missing seeds: %s", "; ".join(missing))
    if failures:
        raise RuntimeError("failed rows:\n" + "\n".join(failures))


if __name__ == "__main__":
    fire.Fire(main)
