"""tools.ablation: the paper's Tables 1 and 2 as row definitions, the overrides that make each row, the datalist
subset, the paired test and the writers, and one tiny row run through the bundle's configs on the shipped sample."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser

from conftest import BUNDLE, SAMPLE
from scripts.losses import FocalTverskyLoss
from scripts.networks import AttentionGate, R2Block, RecurrentUnit
from tools.ablation import (
    FTL,
    INTERIOR_METRICS,
    SCALES,
    TABLE1,
    TABLE2,
    VARIANTS,
    Row,
    Scale,
    _interior_config,
    aggregate,
    implied_foreground_share,
    markdown_table,
    paired_test,
    plot_table,
    row_overrides,
    run_row,
    subset_datalist,
    write_csv,
)

TRAIN = BUNDLE / "configs" / "train.json"


def _parsed(row: Row, scale: Scale = SCALES["cpu"], seed: int = 0) -> ConfigParser:
    """train.json with ``row``'s overrides applied as ``monai.bundle run`` would: values parsed by fire."""
    args = row_overrides(row, scale, seed)
    overrides = {args[i][2:]: DefaultParseValue(args[i + 1]) for i in range(0, len(args), 2)}
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update(overrides)
    return parser


def test_tables_follow_the_paper():
    train = json.loads(TRAIN.read_text())
    assert len(TABLE1) == 19 and len({r.key for r in TABLE1}) == 19
    for row in TABLE1 + TABLE2:
        assert row.loss in train["losses"], row
        assert set(row.params) <= set(train["losses"][row.loss]), row
    for row in TABLE1:
        assert set(row.paper) == {"dice", "precision", "recall", "accuracy", "roc_auc", "kappa"}
        assert all(0 <= v <= 1 for v in row.paper.values())
    # the text (section V.B): alpha 0.3, beta 0.7, gamma 0.75 gives the highest Dice of Table 1
    assert max(TABLE1, key=lambda r: r.paper["dice"]).params == FTL
    assert sum(r.loss == "focal_tversky" for r in TABLE1) == 13 and sum(r.loss == "tversky" for r in TABLE1) == 3
    # Table 2: 5 variants x 2 datasets, the paper's 3 variants with numbers, R2AttU-Net best on both (section VI)
    assert {(r.variant, r.dataset) for r in TABLE2} == {(v, d) for v in VARIANTS for d in ("dsb2018", "isbi2012")}
    assert all(r.params == FTL and r.loss == "focal_tversky" for r in TABLE2)
    for ds in ("dsb2018", "isbi2012"):
        with_paper = [r for r in TABLE2 if r.dataset == ds and r.paper]
        assert {r.variant for r in with_paper} == {"r2attunet", "rattunet", "r2unet"}
        assert max(with_paper, key=lambda r: r.paper["dice"]).variant == "r2attunet"
    # equal settings share a run: Table 2's DSB2018 R2AttU-Net is Table 1's chosen row
    assert next(r for r in TABLE2 if r.variant == "r2attunet" and r.dataset == "dsb2018").key in {r.key for r in TABLE1}


@pytest.mark.parametrize("row", [TABLE1[8], TABLE1[13], TABLE1[14], TABLE1[17], TABLE1[18]], ids=lambda r: r.key)
def test_overrides_set_the_loss(row):
    parser = _parsed(row)
    loss = parser.get_parsed_content("loss")
    expected = {
        "focal_tversky": "FocalTverskyLoss",
        "tversky": "TverskyLoss",
        "dice": "DiceLoss",
        "bce": "BCEWithLogitsLoss",
        "bce_dice": "DiceCELoss",
    }[row.loss]
    assert type(loss).__name__ == expected
    tversky = loss.tversky if isinstance(loss, FocalTverskyLoss) else loss
    for k, v in row.params.items():
        got = loss.gamma if k == "gamma" else getattr(tversky, k)
        assert got == pytest.approx(v)
    assert parser.get_parsed_content("seed") == 0
    assert parser.get_parsed_content("patch_size") == list(SCALES["cpu"].patch_size)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_overrides_set_the_network(variant):
    parser = _parsed(Row("focal_tversky", dict(FTL), variant=variant), seed=3)
    net = parser.get_parsed_content("network_def")
    switches = VARIANTS[variant][1]
    blocks = [m for m in net.modules() if isinstance(m, R2Block)]
    units = [m for m in net.modules() if isinstance(m, RecurrentUnit)]
    assert blocks and all(b.residual == switches["residual"] for b in blocks)
    assert all((u.time_steps > 0) == switches["recurrent"] for u in units)
    assert any(isinstance(m, AttentionGate) for m in net.modules()) == switches["attention"]
    assert parser.get_parsed_content("seed") == 3
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_interior_metrics_config(tmp_path):
    """ISBI 2012: the extra config adds the cell interior's scores (complement of the membrane) to evaluate.json."""
    parser = ConfigParser()
    extra = _interior_config(tmp_path / "interior.json")
    parser.read_config([str(TRAIN), str(BUNDLE / "configs" / "evaluate.json"), str(extra)])
    metrics = parser.get_parsed_content("validate#additional_metrics")
    assert set(INTERIOR_METRICS.values()) <= set(metrics) and "val_pooled_dice" in metrics
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    label = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    for name in INTERIOR_METRICS.values():
        p, y = metrics[name]._output_transform([{"pred": pred, "label": label}])
        assert torch.equal(p[0], 1 - pred) and torch.equal(y[0], 1 - label)


def test_subset_datalist(tmp_path):
    train_file, eval_file = subset_datalist(SAMPLE / "datalist.json", tmp_path, n_train=6, n_select=2, seed=0)
    train, evaluation = json.loads(train_file.read_text()), json.loads(eval_file.read_text())
    source = json.loads((SAMPLE / "datalist.json").read_text())
    fit, select = [i["id"] for i in train["training"]], [i["id"] for i in train["validation"]]
    assert len(fit) == 4 and len(select) == 2 and not set(fit) & set(select)
    assert set(fit + select) <= {i["id"] for i in source["training"]}
    assert [i["id"] for i in evaluation["validation"]] == [i["id"] for i in source["validation"]]
    assert evaluation["training"] == train["training"]
    assert all(
        SAMPLE.joinpath(i["image"]).samefile(j["image"])
        for i, j in zip(source["validation"], evaluation["validation"], strict=True)
    )
    again = subset_datalist(SAMPLE / "datalist.json", tmp_path / "again", n_train=6, n_select=2, seed=0)[0]
    assert json.loads(again.read_text()) == train
    with pytest.raises(ValueError, match="held-out"):
        subset_datalist(SAMPLE / "datalist.json", tmp_path, n_train=4, n_select=4)


def test_paired_test():
    rng = np.random.default_rng(0)
    b = {f"img{i}.png": float(v) for i, v in enumerate(rng.uniform(0.5, 0.8, 30))}
    a = {k: v + 0.05 + float(rng.normal(0, 0.01)) for k, v in b.items()}
    t = paired_test(a, b)
    assert t["n"] == 30 and t["wins"] == 30 and t["p"] < 1e-4 and t["mean_diff"] == pytest.approx(0.05, abs=0.01)
    noise = {k: v + float(rng.normal(0, 0.05)) for k, v in b.items()}
    assert paired_test(noise, b)["p"] > 0.01
    assert paired_test(b, b)["p"] == 1.0
    with pytest.raises(ValueError, match="common"):
        paired_test({"x.png": 1.0}, {"y.png": 1.0})


def test_implied_foreground_share():
    tp, fn, fp, tn = 30.0, 10.0, 5.0, 155.0
    precision, recall, accuracy = tp / (tp + fp), tp / (tp + fn), (tp + tn) / (tp + fn + fp + tn)
    assert implied_foreground_share(precision, recall, accuracy) == pytest.approx((tp + fn) / 200)
    # the paper's Table 2 ISBI 2012 row fits a cell-interior share near the data's (1 - membrane share)
    isbi = next(r for r in TABLE2 if r.variant == "r2attunet" and r.dataset == "isbi2012").paper
    assert 0.7 < implied_foreground_share(isbi["precision"], isbi["recall"], isbi["accuracy"]) < 0.85


def _fake_result(row: Row, seed: int, shift: float, rng: np.random.Generator) -> dict:
    per_image = {f"img{i}.png": float(np.clip(0.6 + shift + rng.normal(0, 0.02), 0, 1)) for i in range(12)}
    dice = float(np.mean(list(per_image.values())))
    metrics = {
        "val_mean_dice": dice,
        "val_pooled_dice": dice,
        "val_precision": 0.7,
        "val_recall": 0.8 + shift,
        "val_accuracy": 0.9,
        "val_roc_auc": 0.95,
        "val_cohen_kappa": 0.6,
    }
    return {
        "key": row.key,
        "dataset": row.dataset,
        "seed": seed,
        "metrics": metrics,
        "per_image_dice": per_image,
        "group_dice": {"fluorescence": dice + 0.1, "colour": dice - 0.2},
        "train_seconds": 10.0,
        "eval_seconds": 5.0,
    }


def test_writers(tmp_path):
    rng = np.random.default_rng(1)
    good, bad = TABLE1[1], TABLE1[10]
    results = {
        (r.key, r.dataset): [_fake_result(r, s, shift, rng) for s in (0, 1)] for r, shift in ((good, 0.1), (bad, 0.0))
    }
    agg = aggregate(TABLE1, results)
    done = {e["row"].key: e for e in agg if e["n_seeds"]}
    assert set(done) == {good.key, bad.key}
    mean = np.mean([x["metrics"]["val_mean_dice"] for x in results[(good.key, "dsb2018")]])
    assert done[good.key]["dice"][0] == pytest.approx(mean) and done[good.key]["dice"][1] > 0
    write_csv(1, results, tmp_path / "t1.csv")
    with open(tmp_path / "t1.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 and {(r["loss"], r["gamma"], r["seed"]) for r in lines} >= {("focal_tversky", "0.75", "0")}
    assert all(float(r["dice_colour"]) == pytest.approx(float(r["dice"]) - 0.2, abs=1e-3) for r in lines)
    md = markdown_table(1, agg, results)
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 19 and len({line.count("|") for line in table_lines}) == 1
    assert f"| {good.loss_label} | 2 | {mean:.3f} ± " in md and f"| {good.paper['dice']:.2f} |" in md
    assert f"dsb2018, winner vs runner-up: **{good.loss_label}**" in md and "better on 12/12 images" in md
    assert "seed by seed: +0.1" in md
    plot_table(1, agg, tmp_path / "figures" / "t1.png")
    assert (tmp_path / "figures" / "t1.png").stat().st_size > 10_000
    # the paper's pick loses: it is tested against the winner too
    results[(bad.key, "dsb2018")] = [_fake_result(bad, s, 0.2, rng) for s in (0, 1)]
    results[(TABLE1[0].key, "dsb2018")] = [_fake_result(TABLE1[0], s, 0.15, rng) for s in (0, 1)]
    md = markdown_table(1, aggregate(TABLE1, results), results)
    assert f"dsb2018, paper's pick vs winner: **{good.loss_label}**" in md and "better on 0/12 images" in md
    # Table 2: R2AttU-Net wins over U-Net, the runner-up: one test, not the same one twice
    t2 = [r for r in TABLE2 if r.dataset == "isbi2012" and r.variant in ("r2attunet", "unet")]
    results = {
        (r.key, r.dataset): [
            {**_fake_result(r, s, 0.1 * (r.variant == "r2attunet"), rng), "dataset": "isbi2012"} for s in (0, 1)
        ]
        for r in t2
    }
    md = markdown_table(2, aggregate(TABLE2, results), results)
    assert md.count("isbi2012, winner vs runner-up: **R2AttU-Net**") == 1 and "paper's pick vs U-Net" not in md
    # R2AttU-Net is always tested against the plain U-Net, also when a third network wins
    third = next(r for r in TABLE2 if r.dataset == "isbi2012" and r.variant == "r2unet")
    results[(third.key, "isbi2012")] = [{**_fake_result(third, s, 0.2, rng), "dataset": "isbi2012"} for s in (0, 1)]
    md = markdown_table(2, aggregate(TABLE2, results), results)
    assert (
        "isbi2012, winner vs runner-up: **R2U-Net**" in md and "isbi2012, paper's pick vs U-Net: **R2AttU-Net**" in md
    )


def test_tiny_row_through_the_bundle(tmp_path, monkeypatch):
    """One real row (plain U-Net, Dice loss) trained for 1 epoch and evaluated by the bundle's configs."""
    scale = Scale(
        channels=(4, 8, 16, 32, 64),
        patch_size=(64, 64),
        infer_roi=(128, 128),
        num_epochs=1,
        train_images=None,
        select_images=2,
        batch_size=2,
    )
    datalists = subset_datalist(SAMPLE / "datalist.json", tmp_path, scale.train_images, scale.select_images)
    row = Row("dice", variant="unet")
    result = run_row(row, 0, scale, datalists, tmp_path / "out")
    row_dir = tmp_path / "out" / "dsb2018" / row.key / "seed0"
    n_val = len(json.loads((SAMPLE / "datalist.json").read_text())["validation"])
    assert len(result["per_image_dice"]) == n_val
    groups = {i["group"] for i in json.loads((SAMPLE / "datalist.json").read_text())["validation"]}
    assert set(result["group_dice"]) == groups
    assert 0 <= result["metrics"]["val_mean_dice"] <= 1 and 0 <= result["metrics"]["val_roc_auc"] <= 1
    assert result["metrics"]["val_mean_dice"] == pytest.approx(
        np.mean(list(result["per_image_dice"].values())), abs=1e-5
    )
    state = torch.load(row_dir / "models" / "model.pt", map_location="cpu")
    state = state.get("model", state)
    assert not any("proj" in k or "att" in k for k in state)  # plain U-Net: no projections, no attention gates
    assert "--loss" in result["train_command"] and "@losses#dice" in result["train_command"]
    # resumable: a finished row is skipped, no command runs
    monkeypatch.setattr("tools.ablation._run", lambda *args: pytest.fail(f"a finished row ran again: {args[0]}"))
    assert run_row(row, 0, scale, datalists, tmp_path / "out") == result
    with pytest.raises(ValueError, match="another scale"):
        run_row(row, 0, Scale(**{**scale.__dict__, "num_epochs": 2}), datalists, tmp_path / "out")
