"""One network from the checkpoint ensemble: the average of its checkpoints' weights, with the BatchNorm statistics
recomputed on training patches (PyTorch's ``torch.optim.swa_utils.update_bn``), so that inference runs one network
instead of three.

``python -m tools.average_weights --ensemble_dir bundle/models/ensemble --dataset_dir bundle/data/dsb2018
--out bundle/models/model_avg.pt [--batches 64]``

Compare it with ``tools.benchmark modes`` (``--ckpt_dir`` of a folder holding it as ``model.pt``) before shipping it.
"""

from __future__ import annotations

from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser
from torch.optim.swa_utils import update_bn

from scripts.evaluation import ensemble_files
from scripts.files import atomic_path
from tools import BUNDLE


def average_state_dicts(files: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of the ``state_dict`` files (integer buffers such as
    BatchNorm's ``num_batches_tracked`` from the first)."""
    states = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    return {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[0].items()
    }


def main(ensemble_dir: str, dataset_dir: str, out: str, batches: int = 64, seed: int = 0) -> str:
    """Average the checkpoints of ``ensemble_dir``, recompute BatchNorm statistics on ``batches`` batches of the
    training split of ``dataset_dir`` (train.json's patches and augmentation), write ``out`` (a ``state_dict``)."""
    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(Path(dataset_dir).resolve()), "num_workers": 0})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(average_state_dicts(ensemble_files(ensemble_dir)))
    loader = parser.get_parsed_content("train#dataloader")

    def images():
        for i, batch in enumerate(loader):
            if i >= batches:
                return
            yield batch["image"]

    update_bn(images(), network)
    with atomic_path(out) as tmp:
        torch.save(network.state_dict(), tmp)
    print(f"{out}: the mean of {len(ensemble_files(ensemble_dir))} checkpoints, BatchNorm on {batches} batches")
    return out


if __name__ == "__main__":
    fire.Fire(main)
