"""R2AttU-Net bundle components; configs name them as ``scripts.<module>.<Name>``."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

__all__ = [
    "as_bool",
    "off",
    "default_device",
    "keep_freed_memory",
    "quiet",
    "start_run",
    "bundle_run_command",
    "one_line_errors",
    "InputError",
    "MissingInputError",
]


class InputError(ValueError):
    """An error in what the user gave (data, folders, options). A run that ends on one prints ``error: <message>`` as
    its last line, without MONAI's traceback around it, and exits 1 (see :func:`_input_error_hook`)."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def _input_error(exc: BaseException | None) -> InputError | None:
    """The :class:`InputError` that caused ``exc`` (through MONAI's and ignite's re-raising), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _input_error_hook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, previous: Callable = sys.excepthook
) -> None:
    """``sys.excepthook`` of ``monai.bundle run`` commands (:func:`start_run`): an uncaught exception caused by an
    :class:`InputError` prints only ``error: <message>`` (the traceback says nothing the user can act on); any
    other exception prints its traceback as usual."""
    found = _input_error(exc)
    if found is None:
        previous(exc_type, exc, tb)
        return
    sys.stderr.flush()
    print(f"error: {found}", file=sys.stderr)


def as_bool(value: object) -> bool:
    """A command-line flag as a bool: ``True``/``1`` and the strings ``"true"``/``"1"`` (any case) are true, so that
    ``--resume true`` and ``--resume True`` mean the same."""
    return str(value).strip().lower() in ("true", "1")


def off(value: object) -> bool:
    """``not as_bool(value)``: a flag that is off, for ``_disabled_`` in the configs."""
    return not as_bool(value)


def default_device() -> Any:
    """The first GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def keep_freed_memory(enabled: bool | str = True) -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, on Linux: large blocks (the network's activations) come
    from the heap instead of fresh ``mmap`` pages, and freed memory is not handed back to the system
    (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``), so each pass of the network no longer pays page
    faults on zeroed pages (measured in docs/speed_and_memory.md). Memory freed is held until the process ends.
    Returns whether it was applied (not on other C libraries, nor when ``enabled`` is off)."""
    import ctypes
    import logging
    import platform

    if not as_bool(enabled) or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    applied = bool(libc.mallopt(m_mmap_threshold, 2**31 - 1)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    logging.getLogger(__name__).info(f"glibc malloc keeps freed memory for reuse: {applied}")
    return applied


def quiet(function: Callable[..., Any]) -> Callable[..., None]:
    """``function`` for ``fire``'s command line, returning nothing: ``fire`` would print the returned value after
    what the command itself printed. ``functools.wraps`` keeps the signature, so ``fire`` still sees the arguments."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    return run


def __getattr__(name: str) -> Any:
    """``scripts.<module>`` imports the module on first use, so configs need only ``$import scripts``."""
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise


def one_line_errors() -> None:
    """Make an uncaught :class:`InputError` print ``error: <message>`` alone (:func:`_input_error_hook`), once,
    keeping the hook it wraps: called by the command lines (``monai.bundle run`` through :func:`start_run`, and the
    ``python -m scripts.<module>`` tools), never on import."""
    if getattr(sys.excepthook, "func", None) is not _input_error_hook:
        sys.excepthook = functools.partial(_input_error_hook, previous=sys.excepthook)


def bundle_run_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is the command line ``python -m monai.bundle run ...``."""
    return len(argv) > 1 and argv[1] == "run" and argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py")


def start_run(argv: list[str] | None = None) -> None:
    """The first step of every workflow's ``initialize``: in a ``python -m monai.bundle run`` command, stop at once,
    with one line, on an option that none of its config files defines, and make an uncaught :class:`InputError`
    print ``error: <message>`` alone (:func:`_input_error_hook`). Elsewhere (``ConfigWorkflow`` in a program, the
    napari plugin, MONAI Label) it does nothing: importing ``scripts`` changes nothing in the process."""
    argv = sys.argv if argv is None else argv
    if not bundle_run_command(argv):
        return
    one_line_errors()
    from scripts.options import check_command_line

    try:
        check_command_line(argv)
    except InputError as e:  # leave at once, with the message only
        raise SystemExit(f"error: {e}") from None
