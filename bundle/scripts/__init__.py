"""R2AttU-Net bundle components; configs name them as ``scripts.<module>.<Name>``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["as_bool", "quiet", "InputError", "MissingInputError"]


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
    """``sys.excepthook`` of runs that import the bundle's scripts: an uncaught exception caused by an
    :class:`InputError` prints only ``error: <message>`` (the traceback says nothing the user can act on); any
    other exception prints its traceback as usual."""
    found = _input_error(exc)
    if found is None:
        previous(exc_type, exc, tb)
        return
    sys.stderr.flush()
    print(f"error: {found}", file=sys.stderr)


sys.excepthook = _input_error_hook


def as_bool(value: object) -> bool:
    """A command-line flag as a bool: ``True``/``1`` and the strings ``"true"``/``"1"`` (any case) are true, so that
    ``--resume true`` and ``--resume True`` mean the same."""
    return str(value).strip().lower() in ("true", "1")


def quiet(function: Callable[..., Any]) -> Callable[..., None]:
    """``function`` for ``fire``'s command line, returning nothing: ``fire`` would print the returned value after
    what the command itself printed. ``functools.wraps`` keeps the signature, so ``fire`` still sees the arguments."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    return run


def _check_options() -> None:
    """A ``monai.bundle run`` stops at once, with one line, on an option that none of its config files defines."""
    if (
        len(sys.argv) < 2
        or sys.argv[1] != "run"
        or not sys.argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py")
    ):
        return
    from scripts.options import check_command_line

    try:
        check_command_line()
    except InputError as e:  # at import time, inside MONAI's config parsing: leave at once, with the message only
        raise SystemExit(f"error: {e}") from None


_check_options()
