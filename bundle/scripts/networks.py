"""Recurrent Residual Attention U-Net (R2AttU-Net), N-D.

Follows section III of the paper (Das et al., R2AttU-Net with Focal Tversky loss): recurrent residual convolution
blocks in the encoder and decoder (Alom et al., R2U-Net), additive attention gates on the skip connections
(Oktay et al., Attention U-Net), transposed-convolution upsampling and a 1x1 convolution to logits.

``recurrent``, ``residual`` and ``attention`` switch the three ingredients off one by one, so the same class gives
R2AttU-Net, R2U-Net, the recurrent attention U-Net, the attention U-Net and the plain U-Net of the paper's Table 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.fusion
import torch.utils.checkpoint
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Pool
from monai.networks.nets.attentionunet import AttentionBlock
from monai.utils import ensure_tuple_rep

from scripts import as_bool

logger = logging.getLogger(__name__)

__all__ = [
    "InferenceReLU",
    "RecurrentUnit",
    "R2Block",
    "AttentionGate",
    "PlainSkip",
    "EncoderLevel",
    "DecoderLevel",
    "R2AttUNet",
    "state_dict_config",
    "NETWORK_KEYS",
    "weights_arguments",
    "network_for_weights",
    "ray_count",
    "describe_state_dict",
    "mismatch_message",
    "inflate_state_dict",
    "fold_batch_norm",
    "load_weights",
    "read_state_dict",
    "bfloat16_state_dict",
]


class InferenceReLU(nn.ReLU):
    """ReLU in place when no gradient is recorded (inference: one pass over the activations and one allocation
    less), out of place otherwise (in training an in-place ReLU made bf16 steps slower on an AVX512-BF16 CPU). The
    same function and ``state_dict`` as :class:`torch.nn.ReLU`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(x) if not torch.is_grad_enabled() else torch.relu(x)


_RELU = (InferenceReLU, {})  # for MONAI's Convolution(act=...)


def _add(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y + x``, added in place into ``y`` when no gradient is recorded (``y`` must be a fresh activation)."""
    return y.add_(x) if not torch.is_grad_enabled() else y + x


class RecurrentUnit(nn.Module):
    """Recurrent convolution unit (paper Fig. 2A, eq. 4-5).

    One ``conv -> BN -> ReLU`` whose weights are shared over time: ``h(0) = f(x)``, ``h(t) = f(x + h(t-1))`` for
    ``t = 1..time_steps``, so the convolution runs ``time_steps + 1`` times. ``time_steps=0`` is a plain conv unit.
    Without gradients (inference) ``x + h(t-1)`` is added in place into ``h(t-1)``, which nothing else holds.
    Input and output: ``(B, C, *spatial)``.
    """

    def __init__(
        self, spatial_dims: int, channels: int, time_steps: int = 2, kernel_size: int | Sequence[int] = 3
    ) -> None:
        super().__init__()
        if time_steps < 0:
            raise ValueError(f"time_steps must be >= 0, got {time_steps}.")
        self.time_steps = time_steps
        self.conv = Convolution(spatial_dims, channels, channels, kernel_size=kernel_size, act=_RELU, norm="batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(self.time_steps):
            h = self.conv(_add(h, x))
        return h


def _checkpointed(function: Callable[..., torch.Tensor], module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``function(*inputs)`` under ``torch.utils.checkpoint``: only ``inputs`` are kept, the rest is recomputed in the
    backward pass. The recomputation does not update the running statistics of ``module``'s BatchNorm layers a second
    time."""
    calls = 0

    def run(*args: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(*args)
        buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        try:  # training-mode BatchNorm normalises with the batch statistics, as the first time
            return function(*args)
        finally:  # also when checkpoint stops the recomputation early
            with torch.no_grad():
                for b, s in zip(buffers, saved, strict=True):
                    b.copy_(s)

    return torch.utils.checkpoint.checkpoint(run, *inputs, use_reentrant=False)


class R2Block(nn.Module):
    """Recurrent residual convolution block (paper Fig. 2B, eq. 7).

    ``x -> 1x1 projection -> two recurrent units -> (+ projection)``. ``residual=False`` drops the add;
    ``recurrent=False`` makes the units plain convolutions. With both off the block is the classic U-Net double
    convolution ``conv(in, out) -> conv(out, out)`` with no projection. ``kernel_size`` (an int or one per spatial
    dim, e.g. ``(3, 3, 1)`` for in-plane-only convolutions in a 3D stack) is that of the recurrent units.
    ``memory_saving=True`` keeps only the inputs of the projection and of each recurrent unit during training and
    recomputes the rest in the backward pass (``torch.utils.checkpoint``, see :meth:`recompute`): same outputs,
    gradients and BatchNorm running statistics, less memory, about one more forward pass of compute. Without
    gradients the residual add runs in place (inference: one allocation and pass less, the same values).
    Input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        time_steps: int = 2,
        recurrent: bool = True,
        residual: bool = True,
        memory_saving: bool = False,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        steps = time_steps if recurrent else 0
        self.residual = residual
        self.memory_saving = memory_saving
        if residual or recurrent:
            self.proj: nn.Module = Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)
            first: nn.Module = RecurrentUnit(spatial_dims, out_channels, steps, kernel_size)
        else:
            self.proj = nn.Identity()
            first = Convolution(
                spatial_dims, in_channels, out_channels, kernel_size=kernel_size, act=_RELU, norm="batch"
            )
        self.units = nn.Sequential(first, RecurrentUnit(spatial_dims, out_channels, steps, kernel_size))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        y = self.units(x)
        if self.residual:
            y = _add(y, x)
        return y

    @torch.jit.unused
    def recompute(
        self, head: Callable[..., torch.Tensor] | None, owner: nn.Module, *inputs: torch.Tensor
    ) -> torch.Tensor:
        """Memory-saving training forward of ``self(head(*inputs))`` (``head=None``: ``self(inputs[0])``).

        Three checkpointed segments: ``head`` with the 1x1 projection, then each recurrent unit. Training keeps only
        each segment's input and the backward pass recomputes one segment at a time, so the peak holds one unit's
        activations, not the block's. ``owner`` holds the BatchNorm layers ``head`` runs (see ``_checkpointed``).
        """
        if head is None and isinstance(self.proj, nn.Identity):
            x = inputs[0]
        else:
            x = _checkpointed(lambda *t: self.proj(t[0] if head is None else head(*t)), owner, *inputs)
        y = x
        for unit in self.units:
            y = _checkpointed(unit, unit, y)
        if self.residual:
            y = y + x
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.memory_saving and self.training and torch.is_grad_enabled():
            return self.recompute(None, self, x)
        return self._forward(x)


class AttentionGate(AttentionBlock):
    """Additive attention gate (paper eq. 1-2): ``x * sigmoid(psi(act(W_g g + W_x x)))``.

    MONAI's :class:`~monai.networks.nets.attentionunet.AttentionBlock` with a choice of the inner non-linearity
    ``act`` (the paper prefers tanh over ReLU). ``g`` (gating, decoder) and ``x`` (skip, encoder) have the same
    spatial size; returns ``x`` re-weighted, same shape as ``x``.
    """

    def __init__(self, spatial_dims: int, f_int: int, f_g: int, f_l: int, act: str = "tanh") -> None:
        super().__init__(spatial_dims=spatial_dims, f_int=f_int, f_g=f_g, f_l=f_l)
        self.relu = Act[act]()  # the attribute name comes from AttentionBlock.forward


class PlainSkip(nn.Module):
    """Ungated skip connection with the gate's signature: returns ``x`` unchanged."""

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


class EncoderLevel(nn.Sequential):
    """One encoder level below the first: pooling (``self[0]``) then a block (``self[1]``), so the parameter names
    are those of ``nn.Sequential(pool, block)``. With a memory-saving :class:`R2Block` the pooling is recomputed with
    the block's projection. Input ``(B, C, *s)``, output ``(B, out_channels, *(s / stride))``."""

    def __init__(self, pool: nn.Module, block: nn.Module) -> None:
        super().__init__(pool, block)
        self.memory_saving = bool(getattr(block, "memory_saving", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.memory_saving and self.training and torch.is_grad_enabled():
            return self._recompute(x)
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def _recompute(self, x: torch.Tensor) -> torch.Tensor:
        return self[1].recompute(self[0], self, x)


class DecoderLevel(nn.Module):
    """One decoder level: transposed-conv upsampling, gated skip, concatenation, block.

    ``forward(x, skip)``: ``x`` is ``(B, in_channels, *s)``, ``skip`` is ``(B, in_channels // 2, *(s * stride))``;
    returns ``(B, in_channels // 2, *(s * stride))``. ``kernel_size`` is the upsampling's.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        stride: int | Sequence[int],
        block: nn.Module,
        gate: nn.Module,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        out_channels = in_channels // 2
        self.up = Convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=stride,
            kernel_size=kernel_size,
            is_transposed=True,
            act=_RELU,
            norm="batch",
        )
        self.gate = gate
        self.block = block
        self.memory_saving = bool(getattr(block, "memory_saving", False))

    def merge(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, gate ``skip`` with it and concatenate: ``(B, in_channels, *(s * stride))``."""
        x = self.up(x)
        skip = self.gate(x, skip)
        return torch.cat([skip, x], dim=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.memory_saving and self.training and torch.is_grad_enabled():
            return self._recompute(x, skip)
        return self.block(self.merge(x, skip))

    @torch.jit.unused
    def _recompute(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsampling, gate and concatenation are recomputed with the block's projection."""
        return self.block.recompute(self.merge, self, x, skip)


class R2AttUNet(nn.Module):
    """Recurrent Residual Attention U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for the paper's grayscale images).
        out_channels: output channels; the network returns logits (no sigmoid/softmax).
        channels: feature channels per level, each double the previous one; ``len(channels) - 1`` poolings.
            The paper uses ``(64, 128, 256, 512, 1024)`` (about 39.4 M parameters with 1 input and 1 output).
        time_steps: recurrent steps ``t`` of each recurrent unit (the shared conv runs ``t + 1`` times).
        recurrent: recurrent units (``False``: plain convolutions).
        residual: residual add around each block.
        attention: attention gates on the skips (``False``: plain concatenation).
        top_attention: also gate the shallowest skip. The paper does not (its features are not "mature");
            the common PyTorch R2AttU_Net does.
        attention_act: non-linearity inside the gate, ``"tanh"`` as in the paper or ``"relu"``.
        strides: pooling (and upsampling) factor per level, an int or one int per spatial dim each, e.g.
            ``[[2, 2, 1], [2, 2, 1], [2, 2, 2]]`` for anisotropic EM stacks (sections along the last axis).
            Default 2 everywhere.
        kernel_size: convolution kernel per level (``len(channels)`` entries, each an int or one int per spatial
            dim), or one for all levels. It applies to the level's encoder and decoder blocks and to the upsampling
            into it; ``[[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]`` convolves only in plane at the shallow levels
            of an anisotropic stack. Default 3 everywhere. See :func:`inflate_state_dict` to start such a network
            from 2D weights.
        memory_saving: recompute activations in the backward pass instead of keeping them (training only; same
            results, less memory, about a third more compute per step): each level keeps its input, its projection
            and its first recurrent unit's output; pooling, upsampling, attention gate and concatenation are
            recomputed with the projection and each recurrent unit on its own (see :meth:`R2Block.recompute`).
        axes_order: order of the spatial axes of the input: ``"xyz"``, MONAI's readers' ``(X, Y[, Z])``, which the
            bundle's weights learnt, or ``"zyx"``, numpy's ``([Z,] Y, X)`` (tifffile, napari, bioimage.io): the
            network reverses them in and out, so the same weights give the same result on either.
        rays: the last ``rays`` of the ``out_channels`` are star-convex distances (StarDist,
            :func:`scripts.instances.star_distances`), computed by their own head as in StarDist: a 3x3 convolution
            to ``ray_channels`` features with ReLU, then a 1x1 convolution; the other channels keep the 1x1 ``head``.
        ray_channels: the ray head's features (StarDist's ``net_conv_after_unet``, 128).

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by the product of its strides
    (16 for the default 4 poolings); output ``(B, out_channels, *spatial)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        time_steps: int = 2,
        recurrent: bool = True,
        residual: bool = True,
        attention: bool = True,
        top_attention: bool = False,
        attention_act: str = "tanh",
        strides: Sequence[int | Sequence[int]] | None = None,
        memory_saving: bool = False,
        kernel_size: int | Sequence[int | Sequence[int]] = 3,
        axes_order: str = "xyz",
        rays: int = 0,
        ray_channels: int = 128,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if axes_order not in ("xyz", "zyx"):
            raise ValueError(f"axes_order must be 'xyz' or 'zyx', got {axes_order!r}.")
        # "zyx": inputs in numpy order (B, C, [Z,] Y, X), reversed to the (X, Y[, Z]) order the weights learnt
        self.reverse_axes = axes_order == "zyx"
        self.axes_permutation = [0, 1] + list(range(spatial_dims + 1, 1, -1))
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        if any(b != 2 * a for a, b in zip(channels[:-1], channels[1:], strict=True)):
            raise ValueError(f"channels must double at each level, got {channels}.")
        depth = len(channels) - 1
        strides = [2] * depth if strides is None else list(strides)
        if len(strides) != depth:
            raise ValueError(f"strides needs {depth} entries (one per pooling), got {len(strides)}.")
        kernels = [kernel_size] * (depth + 1) if isinstance(kernel_size, int) else list(kernel_size)
        if len(kernels) != depth + 1:
            raise ValueError(f"kernel_size needs {depth + 1} entries (one per level) or one int, got {len(kernels)}.")
        self.spatial_dims = spatial_dims
        self.strides = [ensure_tuple_rep(s, spatial_dims) for s in strides]
        self.kernel_size = [ensure_tuple_rep(k, spatial_dims) for k in kernels]
        if any(k % 2 == 0 for ks in self.kernel_size for k in ks):
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}.")

        def block(c_in: int, c_out: int, level: int) -> R2Block:
            return R2Block(
                spatial_dims,
                c_in,
                c_out,
                time_steps,
                recurrent=recurrent,
                residual=residual,
                memory_saving=memory_saving,
                kernel_size=self.kernel_size[level],
            )

        encoder: list[nn.Module] = [block(in_channels, channels[0], 0)]
        for level in range(1, depth + 1):
            pool = Pool[Pool.MAX, spatial_dims](kernel_size=self.strides[level - 1], stride=self.strides[level - 1])
            encoder.append(EncoderLevel(pool, block(channels[level - 1], channels[level], level)))
        self.encoder = nn.ModuleList(encoder)

        decoder: list[nn.Module] = []
        for level in range(depth, 0, -1):  # deepest first
            c_skip = channels[level - 1]
            gated = attention and (level > 1 or top_attention)
            gate = AttentionGate(spatial_dims, c_skip // 2, c_skip, c_skip, attention_act) if gated else PlainSkip()
            decoder.append(
                DecoderLevel(
                    spatial_dims,
                    channels[level],
                    self.strides[level - 1],
                    block(2 * c_skip, c_skip, level - 1),
                    gate,
                    self.kernel_size[level - 1],
                )
            )
        self.decoder = nn.ModuleList(decoder)
        self.rays = int(rays)
        if not 0 <= self.rays < out_channels:
            raise ValueError(f"rays must leave at least one of the {out_channels} output channels, got {rays}.")
        self.head = Convolution(spatial_dims, channels[0], out_channels - self.rays, kernel_size=1, conv_only=True)
        self.ray_head = None
        if self.rays:
            self.ray_head = nn.Sequential(
                Convolution(spatial_dims, channels[0], int(ray_channels), kernel_size=3, act="RELU", norm=None),
                Convolution(spatial_dims, int(ray_channels), self.rays, kernel_size=1, conv_only=True),
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-in, ReLU gain) convolution weights, zero biases, unit BN (paper section V.B)."""
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reverse_axes:
            return self._forward(x.permute(self.axes_permutation)).permute(self.axes_permutation)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        n = len(skips)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[n - 2 - i])
        if self.ray_head is None:
            return self.head(x)
        return torch.cat([self.head(x), self.ray_head(x)], dim=1)


def _fold_pair(conv: nn.Module, bn: nn.Module) -> nn.Module | None:
    """``conv`` with eval-mode ``bn`` folded into its weights, or ``None`` if the pair is not conv + BatchNorm."""
    if not isinstance(conv, nn.modules.conv._ConvNd) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return None
    if not bn.track_running_stats:
        return None
    return torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=conv.transposed)


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution's weights and bias, in place,
    for inference: ``conv -> BN`` becomes one convolution computing the same eval-mode function with one pass over
    the activations less. Covers MONAI's :class:`~monai.networks.blocks.Convolution` (``conv`` then ``adn.N``) and
    ``Sequential(Convolution(conv_only), BatchNorm)`` (:class:`~monai.networks.nets.attentionunet.AttentionBlock`),
    every pair of :class:`R2AttUNet`. Puts ``network`` in eval mode and returns it; its ``state_dict`` no longer
    holds the folded BatchNorm entries.
    """
    network.eval()
    for module in list(network.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names[:-1], names[1:], strict=True):
            first, second = module._modules[a], module._modules[b]
            if isinstance(second, nn.Sequential) and list(second._modules)[:1] == ["N"]:
                fused = _fold_pair(first, second._modules["N"])  # MONAI Convolution: conv, then adn = (N, A, ...)
                if fused is not None:
                    module._modules[a], second._modules["N"] = fused, nn.Identity()
            elif isinstance(first, Convolution) and list(first._modules) == ["conv"]:
                fused = _fold_pair(first._modules["conv"], second)  # Sequential(Convolution(conv_only), BN)
                if fused is not None:
                    first._modules["conv"], module._modules[b] = fused, nn.Identity()
    return network


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The network weights in ``path``: the ``state_dict`` itself, or the one a training checkpoint holds under
    ``model``."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    return state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state


def bfloat16_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors in bfloat16 on the CPU (half the file; the bundle loads such weights
    into its float32 networks), other tensors as they are."""
    return {
        k: v.detach().to("cpu", torch.bfloat16) if v.is_floating_point() else v.detach().cpu() for k, v in state.items()
    }


def load_weights(
    network: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", fold: bool = False
) -> nn.Module:
    """Load the weights at ``path`` (a ``state_dict``, or a checkpoint holding one under ``model``) into ``network``
    and put it in eval mode, with BatchNorm folded (:func:`fold_batch_norm`) when ``fold`` is set. Weights that do
    not fit raise an error naming the configuration they belong to (:func:`mismatch_message`)."""
    state = read_state_dict(path, map_location)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(mismatch_message(path, state, network)) from e
    network.eval()
    return fold_batch_norm(network) if fold else network


# the network_def arguments that :func:`state_dict_config` reads back from weights (a config's network_def takes them)
NETWORK_KEYS = ("in_channels", "out_channels", "channels", "rays", "ray_channels")


def state_dict_config(state: dict) -> dict | None:
    """The :class:`R2AttUNet` arguments that produced a ``state_dict``: ``spatial_dims``, ``in_channels``,
    ``out_channels``, ``channels`` (per level) and ``gated`` (the number of depths with an attention gate), and with
    a ray head ``rays`` and ``ray_channels``; ``None`` when ``state`` is not an R2AttUNet's."""
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("encoder.")})
    if not levels or "head.conv.weight" not in state:
        return None
    head = state["head.conv.weight"]
    channels = []
    for level in levels:
        prefix = f"encoder.{level}." if level == 0 else f"encoder.{level}.1."
        weights = [v for k, v in state.items() if k.startswith(prefix) and k.endswith("conv.weight") and v.ndim > 2]
        channels.append(int(weights[0].shape[0]))
    first = [v for k, v in state.items() if k.startswith("encoder.0.") and k.endswith("conv.weight")][0]
    gated = sum(1 for k in state if k.startswith("decoder.") and k.endswith("gate.psi.0.conv.weight"))
    config = {
        "spatial_dims": head.ndim - 2,
        "in_channels": int(first.shape[1]),
        "out_channels": int(head.shape[0]),
        "channels": channels,
        "gated": gated,
    }
    if "ray_head.1.conv.weight" in state:
        rays = int(state["ray_head.1.conv.weight"].shape[0])
        config.update(out_channels=config["out_channels"] + rays, rays=rays)
        config["ray_channels"] = int(state["ray_head.0.conv.weight"].shape[0])
    return config


def weights_arguments(weights_file: str | os.PathLike | None, **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` (:class:`R2AttUNet` arguments) with the input/output channels, channels per level and ray head
    (:data:`NETWORK_KEYS`) of the weights in ``weights_file`` (a ``state_dict``, or a checkpoint holding one under
    ``model``) where that file exists and holds an R2AttUNet of ``kwargs``' spatial dims; ``kwargs`` unchanged
    otherwise (no file, other weights: the weights loader then names the mismatch)."""
    if not weights_file or not os.path.isfile(weights_file):
        return dict(kwargs)
    state = read_state_dict(weights_file)
    config = state_dict_config(state) if isinstance(state, dict) else None
    if config is None or config["spatial_dims"] != int(kwargs.get("spatial_dims", config["spatial_dims"])):
        return dict(kwargs)
    found = {"rays": 0, **{k: config[k] for k in NETWORK_KEYS if k in config}}
    changed = {k: v for k, v in found.items() if k in kwargs and _plain(kwargs[k]) != v}
    if changed:
        logger.info(f"network as the weights in {weights_file} need: {changed}")
    return {**kwargs, **found}


def _plain(value: Any) -> Any:
    """A config value (int, or a sequence of ints) as :func:`state_dict_config` gives it."""
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)


def network_for_weights(
    weights_file: str | os.PathLike | None = None, load_weights: bool | str = True, **kwargs: Any
) -> R2AttUNet:
    """The :class:`R2AttUNet` of ``kwargs`` shaped as the weights it will load need (:func:`weights_arguments`), so
    that inference runs any folder's weights (``--ckpt_dir``: the shipped models, a wide or contact-channel training)
    without repeating their architecture on the command line. With ``load_weights`` off, exactly ``kwargs``."""
    return R2AttUNet(**(weights_arguments(weights_file, **kwargs) if as_bool(load_weights) else kwargs))


def ray_count(network: nn.Module) -> int:
    """The star-convex distance channels at the end of ``network``'s output (its ``rays``; 0 for other modules), so
    that test-time flips remap the rays of whatever weights inference loaded."""
    return int(getattr(getattr(network, "module", network), "rays", 0))


def describe_state_dict(state: dict) -> str:
    """A readable description of the :class:`R2AttUNet` configuration that produced a ``state_dict``: spatial dims,
    input/output channels, channels per level and gated depths, e.g. to explain why weights do not fit a network."""
    config = state_dict_config(state)
    if config is None:
        return "a network that is not an R2AttUNet"
    return (
        f"R2AttUNet(spatial_dims={config['spatial_dims']}, in_channels={config['in_channels']}, "
        f"out_channels={config['out_channels']}, channels={config['channels']}, attention gates at {config['gated']} "
        f"of {len(config['channels']) - 1} depths)"
    )


def mismatch_message(path: object, state: object, network: nn.Module) -> str:
    """The error for weights at ``path`` (``state``) that do not fit ``network``: which configuration each is."""
    found = describe_state_dict(state) if isinstance(state, dict) else "an unknown network"
    return (
        f"the weights in {path} do not fit network_def: they belong to {found}, while network_def builds "
        f"{describe_state_dict(network.state_dict())}. Set network_def to match the weights (for example "
        f"--network_def#channels ...) or load weights trained with this configuration."
    )


def inflate_state_dict(state: dict, network: nn.Module) -> dict:
    """2D weights (``state``, a ``state_dict`` of a 2D :class:`R2AttUNet`) as a ``state_dict`` for the 3D
    ``network`` with the same channels, the sections along its last spatial axis.

    Each 2D kernel ``(O, I, kx, ky)`` becomes ``(O, I, kx, ky, kz)``: the 2D kernel in the middle section, zeros in the
    others (``kz = 1``: the kernel itself). With in-plane pooling (strides ``(s, s, 1)``), the inflated network then
    computes exactly what the 2D network computes section by section, and training can learn to use the neighbouring
    sections from there (the "inflation" of 2D weights, Carreira and Zisserman, 2017). Other tensors are copied.

    Raises:
        ValueError: when a tensor is missing or its shape cannot be inflated to ``network``'s.
    """
    target = network.state_dict()
    missing = sorted(set(target) - set(state))
    if missing:
        raise ValueError(f"the 2D weights lack {len(missing)} tensors of the 3D network, e.g. {missing[:3]}.")
    inflated = {}
    for key, dst in target.items():
        src = state[key]
        if src.shape == dst.shape:
            inflated[key] = src.clone()
        elif src.ndim + 1 == dst.ndim and tuple(src.shape) == tuple(dst.shape[:-1]) and dst.ndim >= 4:
            weight = torch.zeros(dst.shape, dtype=src.dtype)
            weight[..., dst.shape[-1] // 2] = src
            inflated[key] = weight
        else:
            raise ValueError(
                f"{key}: cannot inflate shape {tuple(src.shape)} to {tuple(dst.shape)}; the 2D and 3D networks need "
                f"the same channels ({describe_state_dict(state)} against {describe_state_dict(target)})."
            )
    return inflated
