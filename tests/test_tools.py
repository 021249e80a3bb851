"""Research tools outside the bundle (tools/): weight averaging."""

import torch

from scripts.networks import R2AttUNet
from tools.average_weights import average_state_dicts


def test_average_state_dicts_is_the_mean_of_the_weights(tmp_path):
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = R2AttUNet(2, 1, 2, channels=(4, 8, 16))
        files.append(str(tmp_path / f"{seed}.pt"))
        torch.save(net.state_dict(), files[-1])
    a, b = (torch.load(f, weights_only=True) for f in files)
    mean = average_state_dicts(files)
    assert mean.keys() == a.keys()
    for k, v in mean.items():
        if v.is_floating_point():
            assert torch.allclose(v, (a[k] + b[k]) / 2)
        else:
            assert torch.equal(v, a[k])  # integer buffers (num_batches_tracked) from the first
    R2AttUNet(2, 1, 2, channels=(4, 8, 16)).load_state_dict(mean)


def test_add_output_channels_keeps_the_trained_ones():
    from tools.add_output_channel import add_output_channels

    torch.manual_seed(0)
    old = R2AttUNet(2, 1, 1, channels=(4, 8, 16)).state_dict()
    new = add_output_channels(old, out_channels=2)
    net = R2AttUNet(2, 1, 2, channels=(4, 8, 16))
    net.load_state_dict(new)  # fits the wider network
    assert torch.equal(new["head.conv.weight"][:1], old["head.conv.weight"])
    assert all(torch.equal(new[k], old[k]) for k in old if not k.startswith("head."))
