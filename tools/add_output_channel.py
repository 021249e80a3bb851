"""Start weights for a network with more output channels: a trained ``R2AttUNet`` ``state_dict`` whose 1x1 output
convolution (``head``) keeps its channels and gets new ones from a fresh network's initialisation (seeded). This is
how the 0.7 objects model (nucleus mask + centre map) started from the 0.6 pixel model's weights.

``python -m tools.add_output_channel --weights OLD.pt --out NEW.pt [--out_channels 2] [--new_bias B]``, then
``monai.bundle run ... --finetune true --finetune_model_path NEW.pt``. ``--rays R`` (with ``--out_channels 2 + R``)
adds a ray head for star-convex distances instead (:class:`scripts.networks.R2AttUNet` ``rays``). ``--new_bias``
starts the new channels' logits at ``B`` (with ``--rays``, everywhere: the ray head's last layer starts at zero), e.g.
star-convex distances near a typical nucleus radius, ``logit(8 / STAR_SCALE)`` = -3.4, so that the first steps'
distance errors stay small and do not upset the trained channels. ``--drop true`` lets the new network keep fewer
trained channels than the weights have (the first ``out_channels - rays``), e.g. a ray head on the contact network
(``models/model.pt``: mask, centre, contact) that keeps its mask and centre map: ``--out_channels 34 --rays 32
--drop true``; ``--out_channels 2 --drop true`` on weights with a ray head drops it, e.g. to infer with a star run's
mask and centre map alone (``--seeds both``), without StarDist.
"""

from __future__ import annotations

import fire
import torch

from scripts import as_bool
from scripts.files import atomic_path
from scripts.networks import R2AttUNet, state_dict_config


def add_output_channels(
    state: dict,
    out_channels: int = 2,
    seed: int = 0,
    new_bias: float | None = None,
    rays: int = 0,
    drop: bool = False,
    **network: object,
) -> dict:
    """``state`` with ``out_channels`` outputs: ``head.conv.weight``/``bias`` widened (the existing channels first),
    or with ``rays`` a fresh ray head (``ray_head.*``) for the last ``rays`` channels beside the ``head``; the new
    channels' bias ``new_bias`` where given. ``drop``: the head keeps only its first ``out_channels - rays`` trained
    channels where the weights have more (without it, an error); with ``rays=0`` it also drops the weights' ray head,
    whose channels are separate, so that the others' outputs are unchanged."""
    torch.manual_seed(seed)
    config = state_dict_config(state)
    if config is None:
        raise ValueError("the weights are not an R2AttUNet's")
    if config.get("rays"):
        if rays or not drop:
            raise ValueError(
                f"the weights already have a ray head ({config['rays']} rays); --rays 0 --drop true drops it"
            )
        state = {k: v for k, v in state.items() if not k.startswith("ray_head.")}
        config = state_dict_config(state)
    kept = out_channels - rays
    if kept < 1 or (kept < config["out_channels"] and not drop):
        raise ValueError(
            f"{out_channels} outputs with {rays} rays drop trained channels ({config['out_channels']}); "
            "--drop true keeps the first ones"
        )
    fresh = R2AttUNet(
        config["spatial_dims"], config["in_channels"], out_channels, channels=config["channels"], rays=rays, **network
    ).state_dict()
    trained = min(kept, config["out_channels"])
    for key in ("head.conv.weight", "head.conv.bias"):
        fresh[key][:trained] = state[key][:trained]
    bias = "ray_head.1.conv.bias" if rays else "head.conv.bias"
    if new_bias is not None:
        fresh[bias][0 if rays else trained :] = float(new_bias)
        if rays:  # the ray head's output starts at new_bias everywhere
            fresh["ray_head.1.conv.weight"].zero_()
    dtype = state["head.conv.weight"].dtype  # e.g. bf16 weights stay bf16
    new = {k: v.to(dtype) for k, v in fresh.items() if k.startswith(("head.", "ray_head."))}
    return {**state, **new}


def main(
    weights: str,
    out: str,
    out_channels: int = 2,
    seed: int = 0,
    new_bias: float | None = None,
    rays: int = 0,
    drop: bool | str = False,
) -> str:
    """Write to ``out`` (atomically) the weights ``weights`` with the outputs of :func:`add_output_channels` (same
    options; ``--drop`` read as the bundle reads flags); returns ``out``."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    with atomic_path(out) as tmp:
        torch.save(add_output_channels(state, out_channels, seed, new_bias, rays, as_bool(drop)), tmp)
    print(
        f"{out}: {weights} with {out_channels} output channels" + (f", the last {rays} from a ray head" if rays else "")
    )
    return out


if __name__ == "__main__":
    fire.Fire(main)
