"""Start weights for a network with more output channels: a trained ``R2AttUNet`` ``state_dict`` whose 1x1 output
convolution (``head``) keeps its channels and gets new ones from a fresh network's initialisation (seeded). This is
how the 0.7 objects model (nucleus mask + centre map) started from the 0.6 pixel model's weights.

``python -m tools.add_output_channel --weights OLD.pt --out NEW.pt [--out_channels 2] [--new_bias B]``, then
``monai.bundle run ... --finetune true --finetune_model_path NEW.pt``. ``--new_bias`` starts the new channels'
logits at ``B`` instead (e.g. star-convex distances near a typical nucleus radius: ``logit(8 / STAR_SCALE)`` = -3.4,
so that the first steps' distance errors stay small and do not upset the trained channels).
"""

from __future__ import annotations

import fire
import torch

from scripts.files import atomic_path
from scripts.networks import R2AttUNet, state_dict_config


def add_output_channels(
    state: dict, out_channels: int = 2, seed: int = 0, new_bias: float | None = None, **network: object
) -> dict:
    """``state`` with ``head.conv.weight``/``bias`` widened to ``out_channels`` (the existing channels first; the new
    ones' bias ``new_bias`` where given)."""
    torch.manual_seed(seed)
    config = state_dict_config(state)
    if config is None:
        raise ValueError("the weights are not an R2AttUNet's")
    fresh = R2AttUNet(
        config["spatial_dims"], config["in_channels"], out_channels, channels=config["channels"], **network
    ).state_dict()
    for key in ("head.conv.weight", "head.conv.bias"):
        old = state[key]
        fresh[key][: old.shape[0]] = old
    if new_bias is not None:
        fresh["head.conv.bias"][state["head.conv.bias"].shape[0] :] = float(new_bias)
    return {**state, "head.conv.weight": fresh["head.conv.weight"], "head.conv.bias": fresh["head.conv.bias"]}


def main(weights: str, out: str, out_channels: int = 2, seed: int = 0, new_bias: float | None = None) -> str:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    with atomic_path(out) as tmp:
        torch.save(add_output_channels(state, out_channels, seed, new_bias), tmp)
    print(f"{out}: {weights} with {out_channels} output channels")
    return out


if __name__ == "__main__":
    fire.Fire(main)
