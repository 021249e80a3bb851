"""Engine handlers that MONAI and ignite lack: atomic full-state checkpoints for resuming, a stop on non-finite
loss that names where it happened, a weights loader whose error says which network the weights fit, a weight
average that starts from fine-tuned weights, and each epoch's weights kept for averaging a plateau."""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EMAHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from scripts import MissingInputError, as_bool
from scripts.networks import bfloat16_state_dict, fold_batch_norm, mismatch_message

__all__ = [
    "SaverState",
    "TrainingStateSaver",
    "EpochWeightsSaver",
    "epoch_weights",
    "latest_checkpoint",
    "resume_path",
    "require_weights",
    "validate_last_epoch",
    "log_outputs",
    "StopOnNonFiniteLoss",
    "WeightsLoader",
    "WeightEMA",
]

logger = logging.getLogger(__name__)

_STATE_PATTERN = "checkpoint_*.pt"


class SaverState:
    """The top-k tracking list of a MONAI :class:`~monai.handlers.CheckpointSaver` as a ``state_dict`` item, so that a
    resumed training keeps the checkpoint ensemble (and the best model) it had built instead of starting anew; with
    ``evaluator``, also the evaluator's best key metric and its epoch, so that "Got new best metric" after a resume
    compares with the best of the whole run (a state without them takes the saver's best score, epoch unknown)."""

    def __init__(self, saver: CheckpointSaver, evaluator: Engine | None = None) -> None:
        self.saver = saver
        self.evaluator = evaluator

    def state_dict(self) -> dict:
        checkpoint = self.saver._key_metric_checkpoint  # the ignite Checkpoint that keeps the top-k list
        state = checkpoint.state_dict() if checkpoint is not None else {}
        if state and self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        state = dict(state)
        best, best_epoch = state.pop("best_metric", None), state.pop("best_metric_epoch", None)
        if not state:
            return
        self.saver.load_state_dict(state)
        saved = state.get("_saved") or []
        if self.evaluator is None or not saved:
            return
        if best is None:  # a state written before 0.11: the saver's best score
            best, best_epoch = max(float(item[0]) for item in saved), 0
        if int(best_epoch) >= 0:
            self.evaluator.state.best_metric = float(best)
            self.evaluator.state.best_metric_epoch = int(best_epoch)


class TrainingStateSaver:
    """Every ``save_interval`` epochs and after the last epoch, write the whole training state (``save_dict``: model,
    optimizer, LR scheduler, trainer, checkpoint-ensemble state...) to ``save_dir/checkpoint_<epoch>.pt``,
    atomically (temporary file, then rename), keeping the last ``n_saved``. Attach it after the validation and LR
    handlers so that the file holds their results for the epoch. Only rank 0 writes in distributed training. A
    ``save_interval`` above 1 suits epochs of a few steps (a GPU runs them in well under a second, and each file
    holds the optimizer's state too)."""

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], n_saved: int = 1, save_interval: int = 1) -> None:
        if int(save_interval) < 1:
            raise ValueError(f"TrainingStateSaver: save_interval must be at least 1, got {save_interval}.")
        self.save_dir = save_dir
        self.n_saved = n_saved
        self.save_interval = int(save_interval)
        self.checkpoint = Checkpoint(
            dict(save_dict),
            DiskSaver(save_dir, require_empty=False, atomic=True, create_dir=True),
            filename_prefix="",
            n_saved=n_saved,
            global_step_transform=lambda engine, _: engine.state.epoch,
        )

    def attach(self, engine: Engine) -> None:
        # every save_interval epochs, and after the last epoch when save_interval does not divide the epochs
        events = Events.EPOCH_COMPLETED(
            event_filter=lambda e, epoch: epoch % self.save_interval == 0 or _last_epoch(e, epoch)
        )
        engine.add_event_handler(events, self.checkpoint)
        engine.add_event_handler(events, self._remove_stale)

    def _remove_stale(self, engine: Engine) -> None:
        """Drop files older than the last ``n_saved`` saves, including those of a run this one resumed."""
        if idist.get_rank() != 0 or not os.path.isdir(self.save_dir):
            return
        for f in glob.glob(os.path.join(self.save_dir, _STATE_PATTERN)):
            if 0 <= _epoch(f) <= engine.state.epoch - self.n_saved * self.save_interval:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)


class EpochWeightsSaver:
    """After every epoch, write ``network``'s weights (the weight average of ``--ema_momentum`` where training keeps
    one: the weights validation scored) in bfloat16 to ``save_dir/model_<epoch>.pt``, atomically, keeping the last
    ``n_saved`` epochs (files of a resumed run included), so that the end of a training can be averaged
    (``tools.average_weights --epochs_dir <save_dir> --last n``) with a rule fixed before reading any score. Only
    rank 0 writes. bfloat16 halves the files; the bundle loads them into its float32 network."""

    def __init__(self, save_dir: str, network: torch.nn.Module, n_saved: int) -> None:
        if int(n_saved) < 1:
            raise ValueError(f"EpochWeightsSaver: n_saved must be at least 1, got {n_saved}.")
        self.save_dir = save_dir
        self.network = network
        self.n_saved = int(n_saved)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        from scripts.files import atomic_path

        weights = bfloat16_state_dict(getattr(self.network, "module", self.network).state_dict())
        epoch = engine.state.epoch
        with atomic_path(os.path.join(self.save_dir, f"model_{epoch}.pt")) as tmp:
            torch.save(weights, tmp)
        for f in epoch_weights(self.save_dir):
            if _epoch(f) <= epoch - self.n_saved or _epoch(f) > epoch:  # older, or of a run this one restarted
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)


def epoch_weights(save_dir: str, last: int | None = None) -> list[str]:
    """The ``model_<epoch>.pt`` files of :class:`EpochWeightsSaver` in ``save_dir`` by epoch, only the ``last`` ones
    when given."""
    files = sorted(glob.glob(os.path.join(save_dir, "model_*.pt")), key=_epoch)
    files = [f for f in files if _epoch(f) >= 0]
    return files if last is None else files[-int(last) :]


def epoch_weights_saver(save_dir: str, network: torch.nn.Module, keep_epochs: int | str) -> EpochWeightsSaver | None:
    """``--keep_epochs n``: the :class:`EpochWeightsSaver` of the last ``n`` epochs (``None`` when 0)."""
    return EpochWeightsSaver(save_dir, network, int(keep_epochs)) if int(keep_epochs) else None


def _epoch(path: str) -> int:
    m = re.search(r"_(\d+)\.pt$", path)
    return int(m.group(1)) if m else -1


def latest_checkpoint(save_dir: str) -> str | None:
    """Path of the newest ``checkpoint_<epoch>.pt`` in ``save_dir`` (highest epoch), or ``None``."""
    files = glob.glob(os.path.join(save_dir, _STATE_PATTERN))
    return max(files, key=_epoch) if files else None


def resume_path(save_dir: str, resume: bool | str) -> str | None:
    """The checkpoint to resume from when ``resume`` is set; an error naming ``save_dir`` when there is none."""
    if not as_bool(resume):
        return None
    path = latest_checkpoint(save_dir)
    if path is None:
        raise MissingInputError(f"--resume: no training checkpoint ({_STATE_PATTERN}) in {save_dir}.")
    logger.info(f"resuming training from {path}")
    return path


def _last_epoch(engine: Engine, epoch: int) -> bool:
    return epoch == engine.state.max_epochs


def validate_last_epoch(trainer: Engine, evaluator: Engine, interval: int) -> None:
    """Run ``evaluator`` after the trainer's last epoch when the validation ``interval`` does not divide the number of
    epochs (MONAI's ``ValidationHandler`` runs every ``interval`` epochs only), so that every training ends validated
    and its best model saved. Attach before the :class:`TrainingStateSaver` so that the last state holds the result."""
    interval = int(interval)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: _last_epoch(e, epoch) and epoch % interval != 0),
        lambda e: evaluator.run(e.state.epoch),
    )


def log_outputs(ckpt_dir: str, ensemble_dir: str, state_dir: str) -> None:
    """Log where a finished training's weights are (only those that exist)."""
    found = [
        (what, path)
        for what, path in (
            ("best weights", os.path.join(ckpt_dir, "model.pt")),
            ("checkpoint ensemble", ensemble_dir),
            ("training state for --resume", state_dir),
        )
        if os.path.exists(path) and (os.path.isfile(path) or os.listdir(path))
    ]
    if found:
        logger.info("; ".join(f"{what}: {path}" for what, path in found))
    else:
        logger.warning(f"no weights were saved in {ckpt_dir} (did a validation run?)")


def require_weights(path: str, ckpt_dir: str) -> bool:
    """``--finetune true``: an error before training starts when the weights to start from are missing (they default
    to ``<ckpt_dir>/model.pt``, which a new ``--ckpt_dir`` does not hold yet)."""
    if not os.path.isfile(path):
        raise MissingInputError(
            f"--finetune true: no weights at finetune_model_path {path} (it defaults to <ckpt_dir>/model.pt, here "
            f"{os.path.join(ckpt_dir, 'model.pt')}); to start from the shipped weights while writing to another "
            "--ckpt_dir, pass --finetune_model_path models/model.pt (or the preset's models/<name>/model.pt)."
        )
    return True


class StopOnNonFiniteLoss:
    """Stop training with an error naming the epoch and iteration when the loss is NaN or infinite. The full
    checkpoint of the last completed epoch is left untouched, so ``--resume true`` (with a fix) continues from it."""

    def __init__(self, output_key: str = "loss") -> None:
        self.output_key = output_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0][self.output_key] if isinstance(output, list) else output[self.output_key]
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            length = engine.state.epoch_length or 0
            iteration = (engine.state.iteration - 1) % length + 1 if length else engine.state.iteration
            raise FloatingPointError(
                f"loss is {value} at epoch {engine.state.epoch}, iteration {iteration} of {length} "
                f"(global iteration {engine.state.iteration}): training stopped. The checkpoint of the last "
                f"completed epoch is kept; lower the learning rate or check the data, then rerun with --resume true."
            )


class WeightsLoader(CheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` whose error, when the weights do not fit the network,
    says which configuration the weights belong to (width, input/output channels, dims, attention gates).

    ``fold_batch_norm``: after loading, fold the networks' BatchNorm layers into their convolutions
    (:func:`~scripts.networks.fold_batch_norm`, inference only); an engine run again keeps the folded weights.
    """

    def __init__(self, *args: Any, fold_batch_norm: bool | str = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fold_batch_norm = as_bool(fold_batch_norm)
        self.folded = False

    def __call__(self, engine: Engine) -> None:
        if self.folded:
            return
        self._load(engine)
        if self.fold_batch_norm:
            for net in self.load_dict.values():
                fold_batch_norm(getattr(net, "module", net))
            self.folded = True

    def _load(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except RuntimeError as e:
            if "state_dict" not in str(e) and "size mismatch" not in str(e):
                raise
            state = torch.load(self.load_path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and len(self.load_dict) == 1:
                state = state.get(next(iter(self.load_dict)), state)
            net = next(iter(self.load_dict.values()))
            raise RuntimeError(mismatch_message(self.load_path, state, getattr(net, "module", net))) from e


class WeightEMA(EMAHandler):
    """ignite's :class:`~ignite.handlers.EMAHandler` (``ema = (1 - m) * ema + m * weights`` after each iteration,
    buffers averaged too; ``momentum`` is ignite's, the weight of the newest weights: 0.005 averages about the last
    200 steps) with two changes. The average starts from the network's weights when the trainer starts, that is after
    a ``--finetune`` load, not from the weights it had when the configuration was parsed; a resumed run (iteration > 0
    at start) keeps the average its checkpoint restored. And the momentum warms up as in TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``: at trainer iteration ``t`` it is ``max(momentum, 9 / (10 + t))``, so
    that a short run validates recent weights rather than an average still close to its random start (the trainer's
    iteration, restored on resume, counts the steps; ignite's own ``momentum_warmup`` is linear and counts its own
    events, so it would start again on every resume). ``ema_model`` is the averaged copy.

    Attach it after the trainer's weight loaders, so that its start handler runs after theirs.
    """

    def __init__(self, model: torch.nn.Module, momentum: float = 0.005) -> None:
        if momentum > 0.5:
            logger.warning(
                f"--ema_momentum {momentum} is the weight of the newest weights in each step's average (ignite's "
                f"convention): it keeps almost no average. An average with decay {momentum} is --ema_momentum "
                f"{1 - momentum:.4g}."
            )
        super().__init__(model, momentum=momentum, handle_buffers="update")

    def attach(self, engine: Engine, name: str = "ema_momentum") -> None:  # type: ignore[override]
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._warm_up, name)
        super().attach(engine, name=name, warn_if_exists=False)
        engine.add_event_handler(Events.STARTED, self._start)

    def _start(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            self.ema_model.load_state_dict(self.model.state_dict())

    def _warm_up(self, engine: Engine, name: str) -> None:
        setattr(engine.state, name, max(self.momentum, 9.0 / (10.0 + engine.state.iteration)))


class EvaluationLabel:
    """Names an evaluation in the console: the engine's own lines (``SupervisedEvaluator``, "Got new best metric")
    are silenced, and when it completes one line gives ``label``, where its weights came from and where its metrics
    went, e.g. ``best checkpoint (models/model.pt): val_mean_dice 0.9123, ...; metrics in eval/best``."""

    def __init__(self, label: str, save_dir: str, weights: str) -> None:
        self.label = label
        self.save_dir = save_dir
        self.weights = weights
        self.logger = logging.getLogger("evaluate")

    def attach(self, engine: Engine) -> None:
        engine.logger.setLevel(logging.WARNING)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scores = ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(engine.state.metrics.items()) if isinstance(v, (int, float))
        )
        self.logger.info(f"{self.label} ({self.weights}): {scores}; metrics in {self.save_dir}")


def weight_ema(network: torch.nn.Module, momentum: float | str) -> WeightEMA | None:
    """The weight average of ``--ema_momentum`` (ignite's momentum, the newest weights' share; ``None`` when it is 0:
    no average)."""
    return WeightEMA(network, momentum=float(momentum)) if float(momentum) else None


def eval_network(network: torch.nn.Module, ema: WeightEMA | None) -> torch.nn.Module:
    """The network that validation scores and checkpoints save: the weight average when there is one."""
    return network if ema is None else ema.ema_model


def training_state(
    objects: Mapping[str, Any], ema: WeightEMA | None = None, evaluator: Engine | None = None
) -> dict[str, Any]:
    """The training state for ``--resume``: ``objects`` (model, optimizer, trainer...) without those a run does not
    have (``None``), checkpoint savers as their :class:`SaverState` (which checkpoints they keep, and ``evaluator``'s
    best key metric), and the weight average's model as ``ema_model`` when there is one."""
    state = {
        k: SaverState(v, evaluator) if isinstance(v, CheckpointSaver) else v
        for k, v in objects.items()
        if v is not None
    }
    if ema is not None:
        state["ema_model"] = ema.ema_model
    return state


def key_metric(engine: Engine) -> float:
    """The evaluator's key metric, for the LR plateau schedule."""
    return engine.state.metrics[engine.state.key_metric_name]


def attach_training_handlers(
    trainer: Engine,
    evaluator: Engine,
    val_interval: int,
    state_saver: TrainingStateSaver,
    lr_handler: Any,
    finetune_loader: CheckpointLoader | None,
    resume_loader: CheckpointLoader | None,
    ema: WeightEMA | None,
    ensemble_dir: str,
    resume: bool | str,
    ckpt_dir: str,
    epoch_saver: EpochWeightsSaver | None = None,
) -> None:
    """Everything ``train.json`` adds to its engines beyond MONAI's handlers, in the order that matters: a check that
    the ``--finetune`` weights exist (before anything is written), validation after the last epoch, the training
    state after validation, the LR schedule on the validation score, the fine-tune and resume loaders (when
    enabled), the weight average after them (and the per-epoch weights it gives, with ``--keep_epochs``), and, when
    the trainer starts (after the data checks and weight loads succeeded), an empty checkpoint ensemble in
    ``<ckpt_dir>/ensemble`` unless the run resumes."""
    if finetune_loader is not None:
        require_weights(finetune_loader.load_path, ckpt_dir)
    validate_last_epoch(trainer, evaluator, val_interval)
    state_saver.attach(trainer)
    lr_handler.attach(evaluator)
    for loader in (finetune_loader, resume_loader, ema, epoch_saver):
        if loader is not None:
            loader.attach(trainer)
    trainer.add_event_handler(Events.STARTED, _reset_ensemble, ensemble_dir, resume)


def _reset_ensemble(engine: Engine, ensemble_dir: str, resume: bool | str) -> None:
    from scripts.evaluation import reset_ensemble

    reset_ensemble(ensemble_dir, resume)
