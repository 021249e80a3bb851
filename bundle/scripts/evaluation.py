"""Evaluation helpers that MONAI and ignite lack: pixel-level inputs for ignite's epoch metrics, and loading the
checkpoint ensemble (the top-k checkpoints by validation Dice that training keeps)."""

from __future__ import annotations

import copy
import glob
import logging
import os
from collections.abc import Callable, Sequence

import torch

from scripts import as_bool
from scripts.networks import mismatch_message

__all__ = ["pixel_pairs", "ensemble_files", "load_ensemble", "reset_ensemble"]

logger = logging.getLogger(__name__)


def pixel_pairs(pred_key: str = "prob", label_key: str = "label") -> Callable[[Sequence[dict]], tuple]:
    """Output transform for ignite's pixel-wise epoch metrics (``ROC_AUC``, ``CohenKappa``).

    Takes the evaluator's decollated output (a list of dicts of ``(C, *spatial)`` tensors) and returns
    ``(y_pred, y)``: every pixel of every image as 1-D float tensors, so the metric pools pixels over the dataset.
    """

    def _transform(output: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        y_pred = torch.cat([torch.as_tensor(o[pred_key]).detach().float().reshape(-1).cpu() for o in output])
        y = torch.cat([torch.as_tensor(o[label_key]).detach().float().reshape(-1).cpu() for o in output])
        return y_pred, y

    return _transform


def ensemble_files(ensemble_dir: str) -> list[str]:
    """The checkpoint files of the ensemble folder, best validation score first (``model_key_metric=<score>.pt``)."""
    files = glob.glob(os.path.join(ensemble_dir, "*.pt"))
    if not files:
        raise FileNotFoundError(f"no checkpoints in {ensemble_dir}: train first (train.json keeps the top-k there).")

    def score(f: str) -> float:
        try:
            return float(os.path.basename(f).rsplit("=", 1)[-1][: -len(".pt")])
        except ValueError:
            return float("-inf")

    return sorted(files, key=score, reverse=True)


def load_ensemble(network: torch.nn.Module, ensemble_dir: str, device: str | torch.device) -> list[torch.nn.Module]:
    """One copy of ``network`` per checkpoint in ``ensemble_dir``, weights loaded, in eval mode on ``device``."""
    members = []
    for f in ensemble_files(ensemble_dir):
        member = copy.deepcopy(network)
        state = torch.load(f, map_location=device, weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            member.load_state_dict(state)
        except RuntimeError as e:
            raise RuntimeError(mismatch_message(f, state, member)) from e
        members.append(member.to(device).eval())
    return members


def reset_ensemble(ensemble_dir: str, resume: bool | str = False) -> None:
    """Start a training's checkpoint ensemble empty: remove ``model_key_metric=*.pt`` left in ``ensemble_dir`` by an
    earlier training (or shipped with the bundle), unless the training resumes, so the ensemble holds only the top-k
    checkpoints of this training."""
    if as_bool(resume):
        return
    for f in glob.glob(os.path.join(ensemble_dir, "model_key_metric=*.pt")):
        try:
            os.remove(f)
            logger.info(f"removed {f} from the checkpoint ensemble of an earlier training")
        except FileNotFoundError:  # another process of a distributed run removed it first
            pass
