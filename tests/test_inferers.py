import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.inferers import (
    AutocastInferer,
    FlipInferer,
    WholeImageInferer,
    autocast_dtype,
    cpu_kind,
    cpu_supports_bf16,
    memory_format,
    with_flips,
)
from scripts.instances import object_targets
from scripts.networks import R2AttUNet


def test_autocast_dtype_choice():
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cpu", "fp16") is torch.float16
    assert autocast_dtype("cpu", "auto") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError):
        autocast_dtype("cpu", "int8")


@pytest.mark.parametrize(
    "amx, avx512_bf16, capability, kind",
    [
        (True, True, "AVX512", "CPU with AMX"),
        (False, True, "AVX512", "CPU with AVX512-BF16"),
        (False, False, "AVX512", "CPU with AVX-512, no bf16"),
        (False, False, "AVX2", "CPU without bf16"),
    ],
)
def test_cpu_kind_names_the_four_measured_kinds(monkeypatch, amx, avx512_bf16, capability, kind):
    import scripts.inferers

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(scripts.inferers, "_LOGGED", set())
    native_bf16 = amx or avx512_bf16
    assert cpu_kind() == kind
    assert cpu_supports_bf16() == native_bf16
    assert autocast_dtype("cpu", "auto") is (torch.bfloat16 if native_bf16 else None)
    # fp32 training: channels-last in 2D where AVX-512 kernels run it faster (1.3x measured), contiguous in 3D
    fp32_2d = torch.channels_last if capability == "AVX512" else torch.contiguous_format
    assert memory_format(2, "cpu", "fp32") == fp32_2d
    assert memory_format(3, "cpu", "fp32") == torch.contiguous_format
    assert memory_format(2, "cpu") == (torch.channels_last if native_bf16 else fp32_2d)
    assert memory_format(3, "cpu") == (torch.channels_last_3d if native_bf16 else torch.contiguous_format)
    assert memory_format(3, "cpu", "fp32", training=False) == torch.channels_last_3d


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


def test_flip_inferer_averages_the_symmetries_mapped_back():
    x = torch.rand(1, 1, 6, 9, 3)  # (X, Y, Z), not square in plane
    tta = FlipInferer(SimpleInferer())
    assert len(tta.symmetries()) == 8 and tta.symmetries()[0] == (False, ())
    assert torch.allclose(tta(x, lambda t: 3 * t), 3 * x)  # an equivariant network is unchanged
    seen = []
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1)

    def position_x(t: torch.Tensor) -> torch.Tensor:  # not equivariant: adds the index along the input's dim 2
        seen.append(tuple(t.shape))
        return t + torch.arange(float(t.shape[2])).view(1, 1, -1, 1, 1)

    out = tta(x, position_x)
    assert out.shape == x.shape and sorted(set(seen)) == [(1, 1, 6, 9, 3), (1, 1, 9, 6, 3)]
    # mapped back: the x index averages to (5 - i + i) / 2 over the x flips, the transposed passes add a y index
    expected = x + (2 * 2.5 + 2 * 4.0) / 4  # 4 plain passes: mean x index 2.5; 4 transposed: mean y index 4
    assert torch.allclose(out, expected) and not torch.allclose(out, x + ramp)
    sections = FlipInferer(SimpleInferer(), spatial_axes=(2,), transpose=False)
    assert sections.symmetries() == [(False, ()), (False, (4,))]
    with pytest.raises(ValueError, match="two spatial axes"):
        FlipInferer(SimpleInferer(), spatial_axes=(0,))


def test_fewer_flip_passes_are_groups_and_tta_takes_their_number():
    """``--tta 2``: identity and the half turn; ``--tta 4``: and the two transposes (each set closed under
    composition, so a symmetric input still gives a symmetric output); ``true`` all 8, ``false`` none."""
    x = torch.rand(1, 1, 8, 8)
    half_turn = FlipInferer(SimpleInferer(), passes=2)
    assert half_turn.symmetries() == [(False, ()), (False, (2, 3))]
    assert [t for t, _ in FlipInferer(SimpleInferer(), passes=4).symmetries()] == [False, False, True, True]
    assert set(FlipInferer(SimpleInferer(), passes=8).symmetries()) == set(FlipInferer(SimpleInferer()).symmetries())

    def position(t: torch.Tensor) -> torch.Tensor:  # adds the row index: not equivariant
        return t + torch.arange(8.0).view(1, 1, 8, 1)

    assert torch.allclose(half_turn(x, position), x + 3.5)  # the row index and its reverse average to 3.5
    assert isinstance(with_flips(SimpleInferer(), "4"), FlipInferer) and with_flips(SimpleInferer(), "4").passes == 4
    assert with_flips(SimpleInferer(), "true").passes == 8
    assert isinstance(with_flips(SimpleInferer(), "0"), SimpleInferer)
    assert isinstance(with_flips(SimpleInferer(), False), SimpleInferer)
    with pytest.raises(ValueError, match="passes must be 1..8"):
        FlipInferer(SimpleInferer(), passes=9)


def test_flip_inferer_matches_the_symmetries_by_hand():
    torch.manual_seed(0)
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16)).eval()
    x = torch.rand(1, 1, 40, 56)
    sw = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.25)

    def by_hand(w: torch.Tensor) -> torch.Tensor:  # each window: the mean over the 8 symmetries, mapped back
        outs = [net(w.flip(d)).flip(d) if d else net(w) for d in ((), (2,), (3,), (2, 3))]
        wt = w.transpose(2, 3)
        outs += [(net(wt.flip(d)).flip(d) if d else net(wt)).transpose(2, 3) for d in ((), (2,), (3,), (2, 3))]
        return torch.stack(outs).mean(0)

    with torch.no_grad():
        single, tta, expected = sw(x, net), FlipInferer(sw)(x, net), sw(x, by_hand)
    assert tta.shape == single.shape and not torch.allclose(tta, single)
    assert torch.allclose(tta, expected, atol=1e-5)


def test_flip_inferer_puts_star_rays_back():
    """A network that answers each input with its exact star-convex targets is equivariant: every pass of the 8,
    rays reordered, gives back the single pass (without the reordering the rays would be mixed)."""
    ids = np.zeros((40, 48), np.int32)
    ids[5:20, 8:30], ids[22:36, 30:44] = 1, 2
    ids[12:30, 20:26] = 3

    def oracle(x: torch.Tensor) -> torch.Tensor:
        targets = [object_targets(xi[0].round().numpy().astype(np.int32), rays=16) for xi in x]
        return torch.logit(torch.as_tensor(np.stack(targets)).clamp(1e-6, 1 - 1e-6))

    x = torch.as_tensor(ids[None, None], dtype=torch.float32)
    single = torch.sigmoid(oracle(x))
    tta = torch.sigmoid(with_flips(SimpleInferer(), True, rays=16)(x, oracle))
    assert torch.allclose(tta, single, atol=1e-4)
    mixed = torch.sigmoid(with_flips(SimpleInferer(), True)(x, oracle))
    assert not torch.allclose(mixed[:, 2:], single[:, 2:], atol=1e-2)
    with pytest.raises(ValueError, match="plane"):
        FlipInferer(SimpleInferer(), spatial_axes=(2,), transpose=False, rays=16)


def test_whole_image_inferer_pads_crops_and_falls_back():
    torch.manual_seed(0)
    net = R2AttUNet(2, 1, 2, channels=(4, 8, 16)).eval()
    x = torch.rand(1, 1, 37, 50)  # not a multiple of the network's stride (4)
    calls = []

    def counting(t):
        calls.append(tuple(t.shape[2:]))
        return net(t)

    sw = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=1, overlap=0.25)
    whole = WholeImageInferer(sw, divisor=4)
    with torch.no_grad():
        out = whole(x, counting)
        padded = net(torch.nn.functional.pad(x, (0, 2, 0, 3)))[..., :37, :50]
    assert out.shape == (1, 2, 37, 50) and calls == [(40, 52)]  # one pass, padded to a multiple of 4
    assert torch.allclose(out, padded)
    calls.clear()
    with torch.no_grad():
        fallback = WholeImageInferer(sw, max_pixels=100, divisor=4)(x, counting)
    assert len(calls) > 1 and all(c == (32, 32) for c in calls)  # too large: the sliding window
    assert fallback.shape == out.shape


def test_memory_format_follows_the_cpu(caplog):
    import scripts.inferers

    scripts.inferers._LOGGED.clear()  # the choice is logged once per process
    with caplog.at_level("INFO", logger="scripts.inferers"):
        fmt = memory_format(2, "cpu")
        # inference: channels-last at every precision (fp32 too: no backward pass, whose channels-last kernels are
        # slow on CPUs without bf16)
        assert memory_format(2, "cpu", "fp32", training=False) == torch.channels_last
        assert memory_format(3, "cpu", "fp32", training=False) == torch.channels_last_3d
    fp32 = torch.channels_last if scripts.inferers.cpu_has_avx512() else torch.contiguous_format
    assert fmt == (torch.channels_last if cpu_supports_bf16() else fp32)
    assert memory_format(2, "cpu", "fp32") == fp32  # fp32 training on a CPU: channels-last only with AVX-512
    assert memory_format(2, "cpu", "bf16") == torch.channels_last
    assert memory_format(3, "cpu") in (torch.channels_last_3d, torch.contiguous_format)
    assert "memory format" in caplog.text and "training" in caplog.text and "inference" in caplog.text


def test_keep_freed_memory_on_glibc_only_when_asked():
    import platform

    from scripts import keep_freed_memory

    assert keep_freed_memory("false") is False
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory(True) is glibc
