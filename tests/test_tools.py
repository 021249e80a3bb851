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
