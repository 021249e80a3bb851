import pytest
import torch
from monai.losses import DiceLoss, TverskyLoss

from scripts.instances import STAR_SCALE
from scripts.losses import FocalTverskyLoss, ObjectLoss


def test_hand_computation():
    p = torch.tensor([0.9, 0.8, 0.1, 0.6]).reshape(1, 1, 2, 2)
    g = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    tp = 0.9 + 0.8 + 0.1
    fp = 0.6
    fn = 0.1 + 0.2 + 0.9
    ti = tp / (tp + 0.3 * fp + 0.7 * fn)
    loss = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, smooth_nr=0, smooth_dr=0)(p, g)
    assert loss.item() == pytest.approx((1 - ti) ** 0.75, rel=1e-6)


def test_equals_monai_tversky_and_dice():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 16, 16)
    target = (torch.rand(3, 2, 16, 16) > 0.6).float()
    ftl = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=1.0, sigmoid=True)(logits, target)
    assert ftl.item() == pytest.approx(TverskyLoss(alpha=0.3, beta=0.7, sigmoid=True)(logits, target).item(), rel=1e-5)
    dice = FocalTverskyLoss(alpha=0.5, beta=0.5, gamma=1.0, sigmoid=True)(logits, target)
    assert dice.item() == pytest.approx(DiceLoss(sigmoid=True)(logits, target).item(), rel=1e-5)


def test_focal_exponent_per_sample_and_channel():
    torch.manual_seed(1)
    p = torch.rand(2, 3, 8, 8)
    g = (torch.rand(2, 3, 8, 8) > 0.5).float()
    one_minus_ti = TverskyLoss(alpha=0.3, beta=0.7, reduction="none")(p, g).reshape(2, 3)
    ftl = FocalTverskyLoss(gamma=0.75, reduction="none")(p, g)
    assert ftl.shape == (2, 3)
    assert torch.allclose(ftl, one_minus_ti**0.75, atol=1e-6)
    assert FocalTverskyLoss(gamma=0.75, batch=True, reduction="none")(p, g).shape == (3,)


def test_beta_above_alpha_penalises_false_negatives_more():
    g = torch.zeros(1, 1, 10, 10)
    g[..., :5, :] = 1  # 50 foreground pixels
    with_fn = g.clone()
    with_fn[..., :1, :] = 0  # 10 false negatives
    with_fp = g.clone()
    with_fp[..., 5:6, :] = 1  # 10 false positives
    loss = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=0.75)
    assert loss(with_fn, g) > loss(with_fp, g)
    swapped = FocalTverskyLoss(alpha=0.7, beta=0.3, gamma=0.75)
    assert swapped(with_fn, g) < swapped(with_fp, g)


def test_finite_gradient_at_perfect_prediction():
    g = torch.zeros(1, 1, 8, 8)
    g[..., 2:5, 2:5] = 1
    p = g.clone().requires_grad_(True)
    loss = FocalTverskyLoss(gamma=0.75)(p, g)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_invalid_gamma():
    with pytest.raises(ValueError):
        FocalTverskyLoss(gamma=0)


def test_object_loss_sums_its_channels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = (torch.rand(2, 3, 16, 16) > 0.7).float()
    mask_loss = FocalTverskyLoss(sigmoid=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    two = ObjectLoss(mask_loss, centre_weight=0.5)(logits[:, :2], target[:, :2])
    assert two == pytest.approx(
        float(mask_loss(logits[:, :1], target[:, :1]) + 0.5 * bce(logits[:, 1:2], target[:, 1:2]))
    )
    contact = bce(logits[:, 2:], target[:, 2:]) + DiceLoss(sigmoid=True, batch=True)(logits[:, 2:], target[:, 2:])
    three = ObjectLoss(mask_loss, centre_weight=0.5, contact_weight=3.0)(logits, target)
    assert three == pytest.approx(float(two + 3.0 * contact), rel=1e-5)
    with pytest.raises(ValueError, match="2 channels"):
        ObjectLoss(mask_loss)(logits[:, :1], target[:, :1])
    with pytest.raises(ValueError, match="got 3 and 2"):
        ObjectLoss(mask_loss)(logits, target[:, :2])


def test_object_loss_with_star_distances():
    torch.manual_seed(0)
    mask_loss = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, sigmoid=True)
    logits = torch.randn(2, 2 + 8, 12, 12)
    target = torch.rand(2, 2 + 8, 12, 12)
    target[:, 1][target[:, 0] < 0.3] = 0.0  # background, where the centre map is 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    weight = target[:, 1:2]
    error = ((torch.sigmoid(logits[:, 2:]) - target[:, 2:]).abs() * STAR_SCALE * weight).mean() / weight.mean()
    background = ((weight == 0) * torch.sigmoid(logits[:, 2:]) * STAR_SCALE).mean()
    expected = mask_loss(logits[:, :1], target[:, :1]) + bce(logits[:, 1:2], target[:, 1:2])
    expected = expected + 0.2 * (error + 1e-3 * background)
    loss = ObjectLoss(mask_loss, rays=8, background_weight=1e-3)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # exact distances cost only the other channels and the background term
    exact = logits.clone()
    exact[:, 2:] = torch.logit(target[:, 2:])
    rest = ObjectLoss(mask_loss, rays=8, background_weight=0.0)(exact, target)
    assert rest.item() == pytest.approx(
        float(mask_loss(exact[:, :1], target[:, :1]) + bce(exact[:, 1:2], target[:, 1:2])), rel=1e-4
    )
    with pytest.raises(ValueError, match="10 channels"):
        ObjectLoss(mask_loss, rays=8)(logits[:, :3], target[:, :3])
