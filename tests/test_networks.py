import pytest
import torch
from scripts.networks import AttentionGate, PlainSkip, R2AttUNet


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
    assert all(isinstance(level.gate, AttentionGate) for level in R2AttUNet(2, 1, 1, channels=ch, top_attention=True).decoder)
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
    for (name, p), q in zip(plain.named_parameters(), saving.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=atol, rtol=1e-3), name
    # the backward pass's recomputation must not update BatchNorm's running statistics a second time
    for (name, b), c in zip(plain.named_buffers(), saving.buffers()):
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
