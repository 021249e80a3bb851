"""Mixed precision chosen by device, for MONAI engines on CPUs as well as GPUs.

MONAI's engines apply ``amp`` through ``torch.autocast("cuda")`` only, so on a CPU they always run fp32. The
:class:`AutocastInferer` wraps any MONAI inferer and runs the network under ``torch.autocast`` on the input's device
with the dtype :func:`autocast_dtype` picks: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX) and on GPUs that
support it, fp16 on older GPUs, fp32 elsewhere. Outputs come back as float32, so losses, sliding-window
accumulation and metrics stay in full precision. Engines call ``inferer(inputs, network)``, so the same network
weights (and checkpoints) serve every precision.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PRECISIONS", "cpu_supports_bf16", "autocast_dtype", "AutocastInferer", "FlipInferer"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means fp32 (no autocast).

    ``"auto"``: bf16 on a CPU with native bf16 and on a bf16-capable GPU, fp16 on other GPUs, else fp32.
    ``"bf16"``/``"fp16"`` force a dtype; ``"fp32"`` disables autocast.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


class _AutocastNetwork:
    """Callable that runs ``network`` under autocast and returns float32 tensors."""

    def __init__(self, network: Callable, dtype: torch.dtype | None) -> None:
        self.network = network
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.network(x, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        return out


class AutocastInferer(Inferer):
    """Run ``inferer`` (default :class:`~monai.inferers.SimpleInferer`) with the network under autocast.

    Args:
        inferer: the wrapped inferer, e.g. a ``SlidingWindowInferer``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`autocast_dtype`).

    ``__call__(inputs, network)``: ``inputs`` ``(B, C, *spatial)``; returns the wrapped inferer's output in float32.
    """

    def __init__(self, inferer: Inferer | None = None, precision: str = "auto") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        dtype = autocast_dtype(inputs.device, self.precision)
        return self.inferer(inputs, _AutocastNetwork(network, dtype), *args, **kwargs)


class FlipInferer(Inferer):
    """Test-time augmentation by symmetry: the mean of ``inferer``'s outputs over every combination of flips along
    ``spatial_axes``, and with ``transpose`` also with the first two of those axes swapped, each output mapped back.

    The default, in-plane axes ``(0, 1)`` with ``transpose=True``, runs the 8 symmetries of the square (for a volume
    ``(X, Y, Z)``: of each section), which suits networks trained with flips and rotations, e.g. the EM presets.
    The outputs (logits) are averaged, so postprocessing is unchanged; it costs ``2 ** len(spatial_axes)`` passes,
    twice that with ``transpose``. ``__call__(inputs, network)``: ``inputs`` ``(B, C, *spatial)``, output as
    ``inferer``'s.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1), transpose: bool = True) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        if transpose and len(self.spatial_axes) < 2:
            raise ValueError(f"transpose needs two spatial axes, got {self.spatial_axes}.")
        self.transpose = bool(transpose)

    def symmetries(self) -> list[tuple[bool, tuple[int, ...]]]:
        """``(transposed, flipped tensor dims)`` of each pass, identity first."""
        dims = [a + 2 for a in self.spatial_axes]
        flips = [c for n in range(len(dims) + 1) for c in itertools.combinations(dims, n)]
        return [(t, f) for t in ((False, True) if self.transpose else (False,)) for f in flips]

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        swap = [a + 2 for a in self.spatial_axes[:2]] if self.transpose else []
        symmetries = self.symmetries()
        total = None
        for transposed, flipped in symmetries:
            x = inputs.transpose(*swap) if transposed else inputs
            x = x.flip(flipped) if flipped else x
            y = self.inferer(x, network, *args, **kwargs)
            y = y.flip(flipped) if flipped else y
            y = y.transpose(*swap) if transposed else y
            total = y if total is None else total + y
        return total / len(symmetries)
