"""One network from several checkpoints: the average of their weights, with the BatchNorm statistics recomputed on
training patches (PyTorch's ``torch.optim.swa_utils.update_bn``), so that inference runs one network instead of
several.

- the checkpoint ensemble: ``python -m tools.average_weights --ensemble_dir bundle/models/nuclei_fast/ensemble --dataset_dir
  bundle/data/dsb2018 --out bundle/models/model_avg.pt [--batches 64]``;
- the last epochs of a training, a rule fixed before looking at any validation score (stochastic weight averaging of
  a plateau): train with ``--keep_epochs n`` (each epoch's validated weights in ``<ckpt_dir>/epochs``), then
  ``--epochs_dir <ckpt_dir>/epochs --last 10``;
- any ``--files "['a.pt', ...]"``; full training checkpoints give their ``ema_model`` (the weight average of
  ``--ema_momentum``) where they hold one, else their ``model``.

The network is built as the weights need (``scripts.networks.state_dict_config``: channels per level, output
channels), whatever train.json declares; ``--half true`` writes bfloat16 tensors (half the size; the bundle loads them
into its float32 network). Compare the result with ``tools.benchmark modes`` or ``scripts.report`` before shipping it.
"""

from __future__ import annotations

from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser
from torch.optim.swa_utils import update_bn

from scripts.evaluation import ensemble_files
from scripts.files import atomic_path
from scripts.handlers import epoch_weights
from scripts.networks import NETWORK_KEYS, bfloat16_state_dict, state_dict_config
from tools import BUNDLE


def network_weights(path: str) -> dict[str, torch.Tensor]:
    """The network ``state_dict`` of ``path``: the file itself, or from a training checkpoint (a dict of the
    trainer's objects) its ``ema_model`` where there is one, else its ``model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("ema_model", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def average_state_dicts(files: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of the ``state_dict`` files (integer buffers such as
    BatchNorm's ``num_batches_tracked`` from the first)."""
    states = [network_weights(f) for f in files]
    return {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[0].items()
    }


def main(
    dataset_dir: str,
    out: str,
    ensemble_dir: str | None = None,
    files: list[str] | None = None,
    epochs_dir: str | None = None,
    last: int | None = None,
    batches: int = 64,
    seed: int = 0,
    half: bool = False,
) -> str:
    """Average the checkpoints of ``ensemble_dir``, the ``files``, or the ``last`` epochs in ``epochs_dir``
    (``--keep_epochs``), recompute BatchNorm statistics on ``batches`` batches of the training split of
    ``dataset_dir`` (train.json's patches and augmentation), write ``out`` (a ``state_dict``; bfloat16 tensors with
    ``half``)."""
    if sum(x is not None for x in (ensemble_dir, files, epochs_dir)) != 1:
        raise ValueError("give one of --ensemble_dir, --files or --epochs_dir")
    if epochs_dir is not None:
        files = epoch_weights(epochs_dir, last)
        if not files:
            raise FileNotFoundError(f"no model_<epoch>.pt in --epochs_dir {epochs_dir} (train with --keep_epochs n)")
    elif files is None:
        files = ensemble_files(ensemble_dir)
    files = [str(f) for f in files]
    state = average_state_dicts(files)
    config = state_dict_config(state)
    if config is None:
        raise ValueError(f"{files[0]} does not hold the weights of an R2AttUNet")
    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(Path(dataset_dir).resolve()), "num_workers": 0})
    parser["network_def"].update({k: v for k, v in config.items() if k in NETWORK_KEYS})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)
    loader = parser.get_parsed_content("train#dataloader")

    def images():
        for i, batch in enumerate(loader):
            if i >= batches:
                return
            yield batch["image"]

    update_bn(images(), network)
    weights = network.state_dict()
    if half:
        weights = bfloat16_state_dict(weights)
    with atomic_path(out) as tmp:
        torch.save(weights, tmp)
    print(f"{out}: the mean of {len(files)} checkpoints, BatchNorm on {batches} batches")
    return out


if __name__ == "__main__":
    fire.Fire(main)
