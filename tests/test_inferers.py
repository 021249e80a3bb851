import pytest
import torch
from monai.inferers import SlidingWindowInferer
from scripts.inferers import AutocastInferer, autocast_dtype, cpu_supports_bf16
from scripts.networks import R2AttUNet


def test_autocast_dtype_choice():
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cpu", "fp16") is torch.float16
    assert autocast_dtype("cpu", "auto") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError):
        autocast_dtype("cpu", "int8")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sliding_window_under_autocast_returns_float32(precision):
    torch.manual_seed(0)
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16)).eval()
    x = torch.rand(1, 1, 50, 70)  # not a multiple of the window: padded and blended
    sw = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        ref = sw(x, net)
        out = AutocastInferer(sw, precision=precision)(x, net)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 50, 70)
    tol = 1e-5 if precision == "fp32" else 0.1 * ref.abs().max().item()
    assert torch.allclose(out, ref, atol=tol)


def test_training_step_under_bf16_has_gradients():
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16)).to(memory_format=torch.channels_last)
    out = AutocastInferer(precision="bf16")(torch.rand(2, 1, 32, 32), net)
    assert out.dtype == torch.float32
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
