"""R2AttU-Net bundle components; configs name them as ``scripts.<module>.<Name>``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


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
