"""Atomic image writers: an interrupted run never leaves a half-written output file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai.data import PILWriter

__all__ = ["AtomicPILWriter"]

logger = logging.getLogger(__name__)


class AtomicPILWriter(PILWriter):
    """MONAI's :class:`~monai.data.PILWriter` that writes ``.<name>.partial<ext>`` next to the target, then renames
    it over the target (``os.replace`` is atomic on POSIX and Windows). Use as ``SaveImaged(writer=...)``."""

    def write(self, filename, verbose: bool = False, **kwargs) -> None:
        path = Path(filename)
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        try:
            super().write(tmp, verbose=False, **kwargs)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if verbose:
            logger.info(f"writing: {path}")
