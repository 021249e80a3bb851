"""Download public datasets from their official sources, with checksum and progress.

``python -m scripts.download dsb2018 --out <dir> [--prepare true] [--md5 <hex>] [--url <url>]``

DSB2018 ``stage1_train`` comes from the Broad Bioimage Benchmark Collection (BBBC038v1, CC0). The archive is
fetched with MONAI's :func:`monai.apps.download_and_extract` (progress bar, hash check), its content is checked
(every image folder has ``images/<id>.png`` and at least one mask), and its MD5 is recorded next to it in
``stage1_train.zip.md5``. The BBBC does not publish a checksum for this archive: pass ``--md5`` to pin one (for
example the one recorded by a first download) so that later downloads are verified against it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import fire
from monai.apps import download_and_extract
from monai.apps.utils import check_hash

__all__ = ["DSB2018_URL", "download_dsb2018"]

logger = logging.getLogger(__name__)

DSB2018_URL = "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_dsb2018_layout(root: Path) -> int:
    """Check a ``stage1_train`` folder: returns the number of image folders, raises ``ValueError`` naming the
    first folder without ``images/<id>.png`` or without masks."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no image folders in the archive.")
    for p in folders:
        if not (p / "images" / f"{p.name}.png").is_file():
            raise ValueError(f"{p}: missing images/{p.name}.png.")
        if not any((p / "masks").glob("*.png")):
            raise ValueError(f"{p}: no masks/*.png.")
    return len(folders)


def download_dsb2018(
    out: str,
    url: str = DSB2018_URL,
    md5: str | None = None,
    prepare: bool = False,
    fixes: str | None = None,
    progress: bool = True,
) -> Path:
    """Download and extract DSB2018 ``stage1_train`` into ``out/stage1_train``; optionally prepare it.

    Args:
        out: output folder; the archive is kept as ``out/stage1_train.zip`` (a complete file is not fetched again).
        url: archive URL (default: the official BBBC038 address).
        md5: expected MD5 of the archive; a mismatch is an error.
        prepare: also run :func:`scripts.data.prepare_dsb2018` into ``out/prepared`` (grayscale images, merged labels,
            ``datalist.json``): then ``--dataset_dir out/prepared`` trains on it.
        fixes: community fixes folder for ``prepare``.
        progress: show download progress.

    Returns:
        the ``stage1_train`` folder.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "stage1_train.zip"
    extract_dir = out_dir / "stage1_train"
    if archive.is_file() and md5 and not check_hash(str(archive), md5, "md5"):
        logger.warning(f"{archive} does not match md5 {md5}: downloading it again.")
        archive.unlink()
    download_and_extract(url, filepath=str(archive), output_dir=str(extract_dir), hash_val=md5, hash_type="md5", progress=progress)
    # the official archive holds the id folders at its top; some mirrors wrap them in a stage1_train/ folder
    nested = extract_dir / "stage1_train"
    root = nested if nested.is_dir() else extract_dir
    n = check_dsb2018_layout(root)
    digest = md5 or _md5(archive)  # a given md5 was verified by download_and_extract
    (out_dir / "stage1_train.zip.md5").write_text(f"{digest}  stage1_train.zip\n")
    logger.info(f"{root}: {n} images; archive md5 {digest}")
    print(f"downloaded {n} DSB2018 images to {root} (md5 {digest})")
    if prepare:
        from scripts.data import prepare_dsb2018

        prepare_dsb2018(root, out_dir / "prepared", fixes=fixes, progress=progress)
    return root


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    fire.Fire({"dsb2018": download_dsb2018})
