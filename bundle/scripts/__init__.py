"""R2AttU-Net bundle components; configs name them as ``scripts.<module>.<Name>``."""


def as_bool(value: object) -> bool:
    """A command-line flag as a bool: ``True``/``1`` and the strings ``"true"``/``"1"`` (any case) are true, so that
    ``--resume true`` and ``--resume True`` mean the same."""
    return str(value).strip().lower() in ("true", "1")
