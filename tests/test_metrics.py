"""Unit tests of scripts.metrics: the array scores that report, tools and tests share (matching and Rand/info scores
are also tested against the challenges' definitions in test_instances.py and test_em.py)."""

import numpy as np
import pytest

from scripts.metrics import dice, dsb_score, iou, matching_ratios, object_counts, object_errors, object_f1


def test_dice_and_iou_of_masks_hand_computed():
    pred = np.zeros((4, 5), bool)
    label = np.zeros((4, 5), bool)
    pred[:2, :3], label[1:3, :3] = True, True  # 6 and 6 pixels, 3 shared
    assert dice(pred, label) == pytest.approx(2 * 3 / 12)
    assert iou(pred, label) == pytest.approx(3 / 9)
    empty = np.zeros((4, 5), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(pred, empty) == 0.0
    with pytest.raises(ValueError, match="differs from label shape"):
        dice(pred, label[:3])


def test_object_errors_name_each_unmatched_nucleus_once():
    true = np.zeros((20, 30), np.int32)
    true[0:4, 0:4], true[0:4, 5:9] = 1, 2  # two touching nuclei ...
    true[8:12, 0:8] = 3  # ... one cut in two ...
    true[15:19, 0:4] = 4  # ... one missed ...
    true[15:19, 10:14] = 5  # ... one outlined too loosely
    true[0:4, 20:24] = 6  # ... one matched
    pred = np.zeros_like(true)
    pred[0:4, 0:9] = 1  # one object over nuclei 1 and 2
    pred[8:12, 0:4], pred[8:12, 4:8] = 2, 3  # nucleus 3 in two halves
    pred[15:17, 0:1] = 4  # a sliver of nucleus 4
    pred[14:20, 9:16] = 5  # 16 of 42 pixels on nucleus 5: IoU 0.38
    pred[0:4, 20:24] = 6
    pred[18:20, 25:28] = 7  # on the background
    counts = object_errors(pred, true)
    assert counts == {
        "true": 6,
        "pred": 7,
        "tp": 1,
        "merged": 2,
        "split": 1,
        "missed": 1,
        "loose": 1,
        "fp": 6,
        "fp_background": 2,  # 7, and 5 (26 of its 42 pixels on the background)
    }
    assert counts["tp"] == object_counts(pred, true)[0]
    assert counts["merged"] + counts["split"] + counts["missed"] + counts["loose"] == counts["true"] - counts["tp"]


def test_object_counts_and_f1_hand_computed():
    true = np.zeros((10, 10), np.int32)
    true[0:4, 0:4], true[6:9, 6:9] = 1, 2
    pred = np.zeros_like(true)
    pred[0:4, 0:3] = 5  # IoU 12/16 with object 1
    pred[6:7, 6:7] = 7  # IoU 1/9: no match
    pred[0:2, 8:10] = 9  # a false detection
    assert object_counts(pred, true).tolist() == [1, 2, 1]
    f1 = object_f1(object_counts(pred, true), "x: ")
    assert f1 == pytest.approx({"x: object precision": 1 / 3, "x: object recall": 1 / 2, "x: object F1": 2 / 5})
    assert object_f1(np.zeros(3)) == {"object precision": 0.0, "object recall": 0.0, "object F1": 0.0}
    # DSB2018: TP/(TP+FP+FN) is 1/4 at thresholds below IoU 0.75, 0 from 0.75 up (5 of the 10 thresholds)
    assert matching_ratios(pred, true)["ratio"][:5] == pytest.approx([0.25] * 5)
    assert dsb_score(pred, true) == pytest.approx(0.125)


def test_masks_from_engine_scores_the_mask_channel_of_object_outputs():
    """Nuclei object models' trainer outputs hold centre/contact/ray channels after the mask: Dice sees the mask."""
    import torch

    from scripts.evaluation import masks_from_engine

    output = [{"pred": torch.rand(34, 4, 4), "label": torch.rand(34, 4, 4)} for _ in range(2)]
    preds, labels = masks_from_engine(objects=True)(output)
    assert [p.shape for p in preds + labels] == [(1, 4, 4)] * 4
    assert torch.equal(preds[1], output[1]["pred"][:1]) and torch.equal(labels[0], output[0]["label"][:1])
    # a mask alone (the evaluators' outputs), masks without objects and EM methods keep every channel
    assert (
        masks_from_engine(objects=True)([{"pred": torch.ones(1, 2, 2), "label": torch.ones(1, 2, 2)}])[0][0].shape[0]
        == 1
    )
    for objects, method in ((False, "nuclei"), (True, "neurons")):
        preds, _ = masks_from_engine(objects=objects, method=method)(output)
        assert preds[0].shape[0] == 34
