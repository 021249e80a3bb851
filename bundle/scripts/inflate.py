"""Command line: 3D starting weights from 2D weights (see :func:`scripts.networks.inflate_state_dict`).

``python -m scripts.inflate --weights models/em2d_mito/model.pt --output init3d.pt
--config_file "['configs/train.json','configs/em3d.json']"`` builds the 3D ``network_def`` of the configs, inflates the
2D weights into it, checks that it segments the sections of a random stack as the 2D network does, and writes
``output`` (atomically). Train from it with ``--finetune true --finetune_model_path init3d.pt``.
"""

from __future__ import annotations

import logging

import fire
import torch
from monai.bundle import ConfigParser

from scripts import quiet
from scripts.files import atomic_path
from scripts.networks import R2AttUNet, inflate_state_dict, mismatch_message

logger = logging.getLogger(__name__)


def inflate(
    weights: str,
    output: str,
    config_file: str | list[str] = ("configs/train.json", "configs/em3d.json"),
    **overrides,
) -> float:
    """Write 3D weights inflated from the 2D ``weights``; returns the largest difference between the 3D network's
    logits and the 2D network's, section by section, on a random ``(1, 1, 64, 64, 4)`` stack in float64 (about
    1e-14 when the 3D network pools only in plane)."""
    parser = ConfigParser()
    parser.read_config(list(config_file) if not isinstance(config_file, str) else config_file)
    parser.update(overrides)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if network.spatial_dims != 3:
        raise ValueError(f"network_def of {config_file} is {network.spatial_dims}D; inflation needs a 3D network.")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        inflated = inflate_state_dict(state, network)
    except ValueError as e:
        raise ValueError(f"{weights}: {e}") from e
    network.load_state_dict(inflated)
    args = parser.get_parsed_content("network_def", instantiate=False, lazy=False).resolve_args()
    planar = [tuple(s[:2]) for s in network.strides], [tuple(k[:2]) for k in network.kernel_size]
    flat = R2AttUNet(**{**args, "spatial_dims": 2, "strides": planar[0], "kernel_size": planar[1]})
    try:
        flat.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(mismatch_message(weights, state, flat)) from e
    network.double().eval()  # float64: compare the functions, not the rounding
    flat.double().eval()
    with torch.no_grad():
        stack = torch.randn(1, 1, 64, 64, 4, dtype=torch.float64)
        sections = stack.permute(0, 4, 1, 2, 3)[0]  # (Z, 1, X, Y)
        expected = flat(sections).permute(1, 2, 3, 0)[None]
        difference = float((network(stack) - expected).abs().max())
    if difference > 1e-6:
        logger.warning(
            f"the 3D network differs from the 2D one section by section ({difference:.2e}): it pools across sections "
            "(a stride > 1 on the last axis), so the inflated weights are a starting point, not the same model."
        )
    with atomic_path(output) as tmp:
        torch.save(inflated, tmp)
    logger.info(f"{output}: {weights} inflated to 3D; largest logit difference to the 2D network {difference:.2e}")
    return difference


if __name__ == "__main__":
    from scripts import one_line_errors

    one_line_errors()
    logging.basicConfig(level=logging.INFO)
    fire.Fire(quiet(inflate))  # ``quiet``: not the returned figure, which the log line already gives
