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
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer

from scripts import as_bool
from scripts.instances import ray_order

__all__ = [
    "PRECISIONS",
    "cpu_kind",
    "cpu_has_avx512",
    "cpu_supports_bf16",
    "autocast_dtype",
    "memory_format",
    "with_flips",
    "AutocastInferer",
    "WholeImageInferer",
    "FlipInferer",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_kind() -> str:
    """The CPU kinds the defaults were measured on: ``"CPU with AMX"``, ``"CPU with AVX512-BF16"`` (both native
    bf16), ``"CPU with AVX-512, no bf16"`` or ``"CPU without bf16"`` (e.g. AVX2 only)."""
    if torch.cpu._is_amx_tile_supported():
        return "CPU with AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "CPU with AVX512-BF16"
    return "CPU with AVX-512, no bf16" if cpu_has_avx512() else "CPU without bf16"


def cpu_has_avx512() -> bool:
    """Whether PyTorch dispatches this CPU's kernels to AVX-512 (``torch.backends.cpu.get_cpu_capability()``)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


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


def memory_format(
    spatial_dims: int, device: str | torch.device, precision: str = "auto", training: bool = True
) -> torch.memory_format:
    """The memory format that runs the network fastest with ``precision`` on ``device``: channels-last
    (``channels_last`` / ``channels_last_3d``) for inference (``training=False``) on every device, and for training
    on GPUs and with bf16 on CPUs (oneDNN's bf16 kernels); for fp32 training on CPUs, channels-last in 2D on AVX-512
    CPUs and the plain contiguous layout otherwise. Measured with ``tools.benchmark``: fp32 channels-last inference
    ran 1.2x (2D) to 1.4x (3D) the contiguous forward pass on an AVX2 CPU, fp32 channels-last training 0.77x there;
    on an AVX-512 CPU without bf16, fp32 channels-last training ran 1.3x contiguous in 2D and 0.84-0.93x in 3D.
    Logs the choice, once per choice."""
    device, training = torch.device(device), as_bool(training)
    dtype = autocast_dtype(device, precision)
    fast = not training or device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16)
    fast = fast or (device.type == "cpu" and spatial_dims == 2 and cpu_has_avx512())
    fmt = (torch.channels_last if spatial_dims == 2 else torch.channels_last_3d) if fast else torch.contiguous_format
    choice = (device.type, precision, str(dtype), str(fmt), training)
    if choice not in _LOGGED:
        _LOGGED.add(choice)
        cpu = "" if device.type != "cpu" else f" ({cpu_kind()})"
        logger.info(
            f"device {device}{cpu}, {'training' if training else 'inference'}: precision {precision} -> "
            f"{'fp32' if dtype is None else str(dtype).split('.')[-1]}, memory format {str(fmt).split('.')[-1]}"
        )
    return fmt


_LOGGED: set[tuple] = set()


def with_flips(inferer: Inferer, tta: bool | int | str, rays: int = 0) -> Inferer:
    """``inferer`` with test-time flips (:class:`FlipInferer`): every symmetry for ``--tta true``, the first ``n`` of
    them for ``--tta n`` (2: and the half turn, 4: and the two transposes), none for ``false`` or ``0``. ``rays``:
    the output's last channels are that many star-convex distances (:func:`scripts.instances.ray_order`)."""
    text = str(tta).strip().lower()
    if text.isdigit() and text not in ("0", "1"):
        return FlipInferer(inferer, passes=int(text), rays=rays)
    return FlipInferer(inferer, rays=rays) if as_bool(tta) else inferer


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


class WholeImageInferer(Inferer):
    """Each image in one pass of the network when it has at most ``max_pixels`` pixels (voxels), else ``inferer``.

    A sliding window of 256x256 with a quarter overlap runs the network over about twice the area of a large image
    and blends the windows; one pass over the whole image, padded (``padding_mode``, ``value``) on its far side to
    a multiple of ``divisor`` (the network's total stride) and cropped back, costs the area once. Images larger than
    ``max_pixels`` (memory) go through ``inferer``. ``__call__(inputs, network)``: ``inputs`` ``(B, C, *spatial)``,
    returns ``(B, C_out, *spatial)``.
    """

    def __init__(
        self,
        inferer: Inferer,
        max_pixels: int = 4_194_304,
        divisor: int = 16,
        padding_mode: str = "constant",
        value: float = 0.0,
    ) -> None:
        super().__init__()
        self.inferer = inferer
        self.max_pixels = int(max_pixels)
        self.divisor = int(divisor)
        self.padding_mode = padding_mode
        self.value = value

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        spatial = tuple(inputs.shape[2:])
        if math.prod(spatial) > self.max_pixels:
            return self.inferer(inputs, network, *args, **kwargs)
        pads = [(-n) % self.divisor for n in spatial]
        padding = [p for pad in reversed(pads) for p in (0, pad)]  # torch.nn.functional.pad: last dim first
        x = torch.nn.functional.pad(inputs, padding, mode=self.padding_mode, value=self.value) if any(pads) else inputs
        out = network(x, *args, **kwargs)
        # the engine's output in the standard layout, whatever the network's memory format and the padding
        return out[(..., *(slice(0, n) for n in spatial))].contiguous()


class _FlipNetwork:
    """Callable: the mean of ``network``'s outputs over the symmetries of :class:`FlipInferer`, each mapped back."""

    def __init__(
        self, network: Callable, symmetries: list[tuple[bool, tuple[int, ...]]], swap: list[int], rays: int = 0
    ) -> None:
        self.network = network
        self.symmetries = symmetries
        self.swap = swap
        self.rays = int(rays)
        # per symmetry, the ray permutation that maps its output back (None: no rays, or the identity)
        self._orders = [
            (
                ray_order(self.rays, transposed, tuple(d - 2 for d in flipped))
                if self.rays and (transposed or flipped)
                else None
            )
            for transposed, flipped in symmetries
        ]

    def _rays_back(self, y: torch.Tensor, order: np.ndarray | None) -> torch.Tensor:
        """``y`` with its last :attr:`rays` channels (star-convex distances) put in the original image's ray order."""
        if order is None:
            return y
        other = y.shape[1] - self.rays
        index = torch.as_tensor(np.concatenate([np.arange(other), order + other]), device=y.device)
        return y.index_select(1, index)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = None
        for (transposed, flipped), order in zip(self.symmetries, self._orders, strict=True):
            xi = x.transpose(*self.swap) if transposed else x
            xi = xi.flip(flipped) if flipped else xi
            y = self.network(xi, *args, **kwargs)
            y = y.flip(flipped) if flipped else y
            y = y.transpose(*self.swap) if transposed else y
            y = self._rays_back(y, order)
            total = y if total is None else total + y
        return total / len(self.symmetries)


class FlipInferer(Inferer):
    """Test-time augmentation by symmetry: ``inferer`` run with a network whose output is the mean over every
    combination of flips along ``spatial_axes`` of its input, and with ``transpose`` also with the first two of
    those axes swapped, each output mapped back.

    The flips apply to each network input, i.e. to each window of a sliding-window ``inferer``, so the windows
    and their blending are those of one pass and the result does not depend on where a block of a large volume
    starts (:mod:`scripts.blocks`). The default, in-plane axes ``(0, 1)`` with ``transpose=True``, runs the 8
    symmetries of the square (for a volume ``(X, Y, Z)``: of each section), which suits networks trained with flips
    and rotations, e.g. the EM presets; windows are square in plane and whole images are padded to a multiple of the
    network's stride, so every symmetry fits the network. The outputs (logits) are averaged, so postprocessing is
    unchanged; it costs ``2 ** len(spatial_axes)`` passes, twice that with ``transpose``, or ``passes``: the first
    that many of :meth:`symmetries`, which puts the half turn second and the transposes third and fourth, so that 2
    and 4 passes are groups of symmetries (each a mean over a group keeps the output's symmetry). With ``rays``, the
    output's last ``rays`` channels are star-convex distances, whose rays each symmetry also permutes
    (:func:`scripts.instances.ray_order`): they are put back in the original image's order before the mean.
    ``__call__(inputs, network)``: ``inputs`` ``(B, C, *spatial)``, output as ``inferer``'s.
    """

    def __init__(
        self,
        inferer: Inferer,
        spatial_axes: Sequence[int] = (0, 1),
        transpose: bool = True,
        passes: int | None = None,
        rays: int = 0,
    ) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        self.rays = int(rays)
        if self.rays and self.spatial_axes != (0, 1):
            raise ValueError(f"FlipInferer: star-convex rays lie in the plane of axes (0, 1), got {self.spatial_axes}.")
        if transpose and len(self.spatial_axes) < 2:
            raise ValueError(f"transpose needs two spatial axes, got {self.spatial_axes}.")
        self.transpose = bool(transpose)
        total = 2 ** len(self.spatial_axes) * (2 if self.transpose else 1)
        if passes is not None and not 1 <= int(passes) <= total:
            raise ValueError(f"FlipInferer: passes must be 1..{total} for these axes, got {passes}.")
        self.passes = total if passes is None else int(passes)

    def symmetries(self) -> list[tuple[bool, tuple[int, ...]]]:
        """``(transposed, flipped tensor dims)`` of each pass: identity first, then the flip of every axis (for two
        axes the half turn), then the transposes, then the rest; the first :attr:`passes` of them."""
        dims = [a + 2 for a in self.spatial_axes]
        flips = [c for n in range(len(dims) + 1) for c in itertools.combinations(dims, n)]
        flips.remove(tuple(dims))
        flips.insert(1, tuple(dims))  # identity, every axis flipped (in 2D the half turn), then the others
        transposes = (False, True) if self.transpose else (False,)
        order = [(t, f) for t in transposes for f in flips[:2]] + [(t, f) for t in transposes for f in flips[2:]]
        return order[: self.passes]

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        swap = [a + 2 for a in self.spatial_axes[:2]] if self.transpose else []
        network = _FlipNetwork(network, self.symmetries(), swap, self.rays)
        return self.inferer(inputs, network, *args, **kwargs)
