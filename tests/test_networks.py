import pytest
import torch

from scripts.networks import (
    AttentionGate,
    InferenceReLU,
    PlainSkip,
    R2AttUNet,
    describe_state_dict,
    inflate_state_dict,
    network_for_weights,
    state_dict_config,
)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_paper_configuration_parameter_count():
    # the widely used PyTorch R2AttU_Net (gate at every depth, 1 in / 1 out channel) has 39,442,797 parameters
    assert n_params(R2AttUNet(2, 1, 1, top_attention=True)) == 39_442_797
    # the paper's choice: no gate at the shallowest depth
    assert n_params(R2AttUNet(2, 1, 1)) == 39_442_797 - (64 * 32 + 32 + 2 * 32) * 2 - (32 + 1 + 2)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 64, 48)), (3, (1, 1, 32, 32, 16))])
def test_shapes(spatial_dims, shape):
    net = R2AttUNet(spatial_dims, 1, 3, channels=(4, 8, 16, 32, 64)).eval()
    with torch.no_grad():
        out = net(torch.rand(*shape))
    assert out.shape == (shape[0], 3, *shape[2:])


def test_anisotropic_strides_3d():
    net = R2AttUNet(3, 1, 1, channels=(4, 8, 16), strides=[[1, 2, 2], [1, 2, 2]]).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 5, 32, 32))  # 5 sections: no pooling along z
    assert out.shape == (1, 1, 5, 32, 32)


def test_anisotropic_kernels_3d():
    kernels = [[3, 3, 1], [3, 3, 1], [3, 3, 3]]
    net = R2AttUNet(3, 1, 1, channels=(4, 8, 16), strides=[[2, 2, 1], [2, 2, 1]], kernel_size=kernels).eval()
    assert net.encoder[0].units[0].conv.conv.weight.shape[2:] == (3, 3, 1)
    assert net.encoder[2][1].units[1].conv.conv.weight.shape[2:] == (3, 3, 3)
    assert net.decoder[0].up.conv.weight.shape[2:] == (3, 3, 1)  # upsampling into level 1
    assert net.decoder[1].block.units[0].conv.conv.weight.shape[2:] == (3, 3, 1)
    with torch.no_grad():
        x = torch.rand(1, 1, 32, 32, 3)
        out = net(x)
        assert out.shape == x.shape
        assert torch.allclose(torch.jit.script(net)(x), out, atol=1e-5)
        # the deepest level's 3x3x3 kernels let the sections interact: changing section 2 changes section 0
        y = x.clone()
        y[..., 2] = torch.rand(1, 1, 32, 32)
        assert not torch.allclose(net(y)[..., 0], out[..., 0])


@pytest.mark.parametrize("strides,exact", [([[2, 2, 1]] * 3, True), ([[2, 2, 1], [2, 2, 2], [2, 2, 1]], False)])
def test_inflated_2d_weights_segment_sections_like_the_2d_network(strides, exact):
    torch.manual_seed(0)
    flat = R2AttUNet(2, 1, 2, channels=(4, 8, 16, 32))
    flat.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            flat(torch.randn(4, 1, 32, 32) * 2 + 1)
    flat.eval()
    kernels = [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]
    net = R2AttUNet(3, 1, 2, channels=(4, 8, 16, 32), strides=strides, kernel_size=kernels).eval()
    state = inflate_state_dict(flat.state_dict(), net)
    assert state["encoder.3.1.units.0.conv.conv.weight"][..., [0, 2]].abs().sum() == 0  # 2D kernel in the middle
    net.load_state_dict(state)
    x = torch.randn(1, 1, 32, 32, 4, dtype=torch.float64)
    with torch.no_grad():
        sections = flat.double()(x.permute(4, 0, 1, 2, 3)[:, 0]).permute(1, 2, 3, 0)[None]
        difference = (net.double()(x) - sections).abs().max()
    assert (difference < 1e-8) if exact else (difference > 1e-3)  # pooling across sections mixes them
    with pytest.raises(ValueError, match="same channels"):
        inflate_state_dict(flat.state_dict(), R2AttUNet(3, 1, 2, channels=(8, 16, 32, 64)))
    with pytest.raises(ValueError, match="lack"):
        inflate_state_dict({}, net)


def test_torchscript_matches_eager():
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16, 32, 64)).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 48, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_variants():
    ch = (4, 8, 16, 32)
    full = R2AttUNet(2, 1, 1, channels=ch)
    plain = R2AttUNet(2, 1, 1, channels=ch, recurrent=False, residual=False, attention=False)
    assert all(isinstance(level.gate, PlainSkip) for level in plain.decoder)
    gates = [isinstance(level.gate, AttentionGate) for level in full.decoder]
    assert gates == [True, True, False]  # deepest first; no gate at the shallowest depth
    assert all(
        isinstance(level.gate, AttentionGate) for level in R2AttUNet(2, 1, 1, channels=ch, top_attention=True).decoder
    )
    # plain U-Net block: conv(in, out) -> conv(out, out), no 1x1 projection, no recurrence
    assert isinstance(plain.encoder[0].proj, torch.nn.Identity)
    assert plain.encoder[0].units[1].time_steps == 0
    # each switch changes the network
    counts = {
        n_params(R2AttUNet(2, 1, 1, channels=ch, recurrent=r, residual=s, attention=a))
        for r, s, a in [(True, True, True), (True, True, False), (False, False, False), (False, False, True)]
    }
    assert len(counts) == 4
    with torch.no_grad():
        assert plain.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_recurrence_has_an_effect():
    torch.manual_seed(0)
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16), time_steps=2).eval()
    once = R2AttUNet(2, 1, 1, channels=(4, 8, 16), time_steps=0).eval()
    once.load_state_dict(net.state_dict())  # recurrence shares weights: same parameters for any time_steps
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net(x), once(x))


def test_he_normal_init():
    net = R2AttUNet(2, 1, 1, channels=(64, 128))
    w = net.encoder[1][1].units[0].conv.conv.weight  # 3x3 conv, fan_in = 128 * 9
    assert abs(w.std().item() - (2.0 / (128 * 9)) ** 0.5) < 0.003
    assert torch.all(net.encoder[1][1].units[0].conv.conv.bias == 0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="double"):
        R2AttUNet(2, 1, 1, channels=(4, 6, 12))
    with pytest.raises(ValueError, match="strides"):
        R2AttUNet(2, 1, 1, channels=(4, 8, 16), strides=[2])
    with pytest.raises(ValueError, match="kernel_size needs 3"):
        R2AttUNet(2, 1, 1, channels=(4, 8, 16), kernel_size=[3, 3])
    with pytest.raises(ValueError, match="odd"):
        R2AttUNet(2, 1, 1, channels=(4, 8, 16), kernel_size=[3, 3, 2])


@pytest.mark.parametrize("precision,spatial_dims", [(None, 2), (torch.bfloat16, 2), (None, 3)])
def test_memory_saving_same_outputs_gradients_and_running_stats(precision, spatial_dims):
    torch.manual_seed(0)
    plain = R2AttUNet(spatial_dims, 1, 1, channels=(4, 8, 16)).train()
    saving = R2AttUNet(spatial_dims, 1, 1, channels=(4, 8, 16), memory_saving=True).train()
    saving.load_state_dict(plain.state_dict())  # same keys: memory_saving adds no parameters or buffers
    x = torch.rand(2, 1, *[16] * spatial_dims)
    outs = []
    for net in (plain, saving):
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            out = net(x)
        out.float().square().mean().backward()
        outs.append(out)
    atol = 1e-5 if precision is None else 1e-2
    assert torch.allclose(outs[0].float(), outs[1].float(), atol=atol)
    for (name, p), q in zip(plain.named_parameters(), saving.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=atol, rtol=1e-3), name
    # the backward pass's recomputation must not update BatchNorm's running statistics a second time
    for (name, b), c in zip(plain.named_buffers(), saving.buffers(), strict=True):
        assert torch.allclose(b.float(), c.float(), atol=1e-6), name


def test_memory_saving_keeps_fewer_activations():
    def saved_bytes(net: torch.nn.Module) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.rand(2, 1, 64, 64)).sum()
        return total

    torch.manual_seed(0)
    plain = saved_bytes(R2AttUNet(2, 1, 1, channels=(4, 8, 16)).train())
    saving = saved_bytes(R2AttUNet(2, 1, 1, channels=(4, 8, 16), memory_saving=True).train())
    assert saving < plain / 3


def test_memory_saving_off_in_eval_and_torchscript():
    net = R2AttUNet(2, 1, 1, channels=(4, 8, 16), memory_saving=True).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fold_batch_norm_same_function_without_batch_norm(spatial_dims):
    from scripts.networks import fold_batch_norm

    torch.manual_seed(0)
    net = R2AttUNet(spatial_dims, 1, 2, channels=(4, 8, 16)).eval()
    for m in net.modules():  # trained-looking statistics, so that folding has something to fold
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 1, *([16] * spatial_dims))
    with torch.no_grad():
        expected = net(x)
        folded = fold_batch_norm(net)
        out = folded(x)
    assert folded is net
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert torch.allclose(out, expected, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_in_place_inference_same_outputs_and_training_gradients(spatial_dims):
    """Without gradients the adds and ReLUs run in place: the same outputs as with gradients (out of place), the
    input untouched; training (out of place) back-propagates."""
    torch.manual_seed(0)
    net = R2AttUNet(spatial_dims, 1, 2, channels=(4, 8, 16))
    x = torch.rand(2, 1, *([16] * spatial_dims))
    out = net(x)  # training: batch statistics
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(isinstance(m, InferenceReLU) for m in net.modules()) > 0
    net.eval()
    kept = x.clone()
    expected = net(x)  # gradients on: out of place
    with torch.no_grad():
        in_place = net(x)
    with torch.inference_mode():
        in_place_mode = net(
            x.contiguous(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
        )
    assert torch.equal(x, kept)
    assert torch.equal(in_place, expected.detach())
    assert torch.allclose(in_place_mode, expected.detach(), atol=1e-5)


@pytest.mark.parametrize("spatial_dims,channels", [(2, (8, 16, 32)), (3, (4, 8))])
def test_state_dict_config_reads_the_arguments_back(spatial_dims, channels):
    state = R2AttUNet(spatial_dims, 2, 3, channels=channels).state_dict()
    config = state_dict_config(state)
    assert config == {
        "spatial_dims": spatial_dims,
        "in_channels": 2,
        "out_channels": 3,
        "channels": list(channels),
        "gated": len(channels) - 2,  # no gate at the top level (top_attention False)
    }
    R2AttUNet(config["spatial_dims"], config["in_channels"], config["out_channels"], channels=config["channels"])
    assert f"channels={list(channels)}" in describe_state_dict(state)
    assert state_dict_config({"conv.weight": torch.zeros(1)}) is None
    if spatial_dims == 2:  # a ray head (star-convex distances) is read back too
        rays = state_dict_config(R2AttUNet(2, 2, 11, channels=channels, rays=8, ray_channels=16).state_dict())
        assert rays["out_channels"] == 11 and rays["rays"] == 8 and rays["ray_channels"] == 16


def test_ray_head_outputs_the_last_channels_and_scripts():
    torch.manual_seed(0)
    net = R2AttUNet(2, 1, 10, channels=(4, 8, 16), rays=8, ray_channels=12).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 10, 32, 48)
        seen = []
        hook = net.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        net(x)
        hook.remove()
        assert torch.equal(out[:, :2], net.head(seen[0])) and torch.equal(out[:, 2:], net.ray_head(seen[0]))
        assert torch.allclose(torch.jit.script(net)(x), out)
    assert net.head.conv.out_channels == 2 and net.ray_head[1].conv.out_channels == 8
    with pytest.raises(ValueError, match="rays must leave"):
        R2AttUNet(2, 1, 8, channels=(4, 8, 16), rays=8)


def test_network_for_weights_takes_the_architecture_of_the_weights(tmp_path):
    """inference.json's network: shaped as the weights in --ckpt_dir need (channels, output channels, ray head), as
    declared without a weights file, with --load_weights false, or for weights of other spatial dims."""
    declared = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64]}
    trained = R2AttUNet(2, 1, 3, channels=(4, 8, 16))
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    torch.save({"model": R2AttUNet(2, 1, 10, channels=(4, 8, 16), rays=8).state_dict()}, tmp_path / "state.pt")
    torch.save(R2AttUNet(3, 1, 3, channels=(4, 8)).state_dict(), tmp_path / "3d.pt")
    net = network_for_weights(str(tmp_path / "model.pt"), **declared)
    net.load_state_dict(trained.state_dict())
    assert (net.head.conv.out_channels, net.rays) == (3, 0)
    rays = network_for_weights(str(tmp_path / "state.pt"), **declared)  # a training checkpoint's model
    assert (rays.rays, rays.ray_head[1].conv.out_channels) == (8, 8)
    for path, load in ((tmp_path / "missing.pt", True), (tmp_path / "model.pt", "false"), (tmp_path / "3d.pt", True)):
        as_declared = network_for_weights(str(path), load_weights=load, **declared)
        assert state_dict_config(as_declared.state_dict())["channels"] == [16, 32, 64]
