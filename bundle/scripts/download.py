"""Download public datasets from their official sources, with checksum and progress.

``python -m scripts.download dsb2018 --out <dir> [--prepare true] [--md5 <hex>] [--url <url>]``
``python -m scripts.download isbi2012 --out <dir> [--prepare true] [--base_url <url>] [--verify true]``

DSB2018 ``stage1_train`` comes from the Broad Bioimage Benchmark Collection (BBBC038v1, CC0). The archive is
fetched with MONAI's :func:`monai.apps.download_and_extract` (progress bar, hash check), its content is checked
(every image folder has ``images/<id>.png`` and at least one mask), and its MD5 is recorded next to it in
``stage1_train.zip.md5``. The BBBC does not publish a checksum for this archive: pass ``--md5`` to pin one (for
example the one recorded by a first download) so that later downloads are verified against it.

ISBI 2012 (ssTEM of the Drosophila first-instar larva VNC, "Segmentation of neuronal structures in EM stacks") comes
from the challenge's site as three 30-page 512x512 TIFF stacks, ``train-volume.tif``, ``train-labels.tif`` and
``test-volume.tif`` (the site asks users to register and to cite Cardona et al. 2010 and Arganda-Carreras et al. 2015).
The MD5 values pinned below are the ones community loaders check these files against; this offline machine could not
confirm them against the site, so ``--verify false`` skips the check and records the files' MD5 instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import fire
from monai.apps import download_and_extract
from monai.apps.utils import check_hash

__all__ = ["file_md5", "DSB2018_URL", "ISBI2012_URL", "ISBI2012_FILES", "download_dsb2018", "download_isbi2012"]

logger = logging.getLogger(__name__)

DSB2018_URL = "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip"
ISBI2012_URL = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files/"
ISBI2012_FILES = {  # file name: md5
    "train-volume.tif": "465461edbe0254630c4ec5577f1e7764",
    "train-labels.tif": "657fe6b728c6dd0152e295c6d800001d",
    "test-volume.tif": "9767660d7abe4e0ecbdd0061a16058ad",
}


@contextlib.contextmanager
def _reaching(url: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn a network failure while fetching ``url`` into a ``ConnectionError`` that names it and the way round it."""
    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise ConnectionError(
            f"cannot download {url} ({getattr(e, 'reason', e)}): check the network, or fetch the file by other means "
            f"into {path} and run the same command again (a complete file there is not fetched again)."
        ) from e


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file, read in 1 MB chunks."""
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
    with _reaching(url, archive):
        download_and_extract(
            url, filepath=str(archive), output_dir=str(extract_dir), hash_val=md5, hash_type="md5", progress=progress
        )
    # the official archive holds the id folders at its top; some mirrors wrap them in a stage1_train/ folder
    nested = extract_dir / "stage1_train"
    root = nested if nested.is_dir() else extract_dir
    n = check_dsb2018_layout(root)
    digest = md5 or file_md5(archive)  # a given md5 was verified by download_and_extract
    (out_dir / "stage1_train.zip.md5").write_text(f"{digest}  stage1_train.zip\n")
    logger.info(f"{root}: {n} images; archive md5 {digest}")
    print(f"downloaded {n} DSB2018 images to {root} (md5 {digest})")
    if prepare:
        from scripts.data import prepare_dsb2018

        prepare_dsb2018(root, out_dir / "prepared", fixes=fixes, progress=progress)
    return root


def download_isbi2012(
    out: str,
    base_url: str = ISBI2012_URL,
    verify: bool = True,
    prepare: bool = False,
    val_slices=(20, 21, 22, 23, 24),
    progress: bool = True,
) -> Path:
    """Download the ISBI 2012 stacks into ``out`` and check that each is a stack of 512x512 pages, the training
    volume and labels of equal shape; optionally prepare them (:func:`scripts.data.prepare_isbi2012`, membrane = 255).

    Args:
        out: output folder (a complete, verified file is not fetched again).
        base_url: folder URL holding the three TIFF files (default: the challenge's site).
        verify: check each file against :data:`ISBI2012_FILES`; ``False`` records the files' MD5 in ``md5.txt`` only.
        prepare: also write ``out/prepared`` (slices, labels, ``datalist.json``): ``--dataset_dir out/prepared``.
        val_slices: the validation slices of ``prepare``.
        progress: show download progress.

    Returns:
        the ``out`` folder holding the stacks.
    """
    import tifffile
    from monai.apps import download_url

    from scripts import as_bool

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    verify = as_bool(verify)
    shapes, digests = {}, {}
    for name, md5 in ISBI2012_FILES.items():
        path = out_dir / name
        expected = md5 if verify else None
        if path.is_file() and expected and not check_hash(str(path), expected, "md5"):
            logger.warning(f"{path} does not match md5 {expected}: downloading it again.")
            path.unlink()
        url = base_url.rstrip("/") + "/" + name
        with _reaching(url, path):
            download_url(url, filepath=str(path), hash_val=expected, hash_type="md5", progress=progress)
        try:
            with tifffile.TiffFile(path) as tif:
                shapes[name] = tif.series[0].shape
        except Exception as e:
            raise ValueError(f"{path}: not a readable TIFF stack ({type(e).__name__}: {e}).") from e
        if len(shapes[name]) != 3:
            raise ValueError(f"{path}: expected a stack of 2D pages, got shape {shapes[name]}.")
        digests[name] = expected or file_md5(path)
    if shapes["train-volume.tif"] != shapes["train-labels.tif"]:
        raise ValueError(
            f"{out_dir}: train-labels.tif {shapes['train-labels.tif']} and train-volume.tif "
            f"{shapes['train-volume.tif']} differ in shape."
        )
    (out_dir / "md5.txt").write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    print(f"downloaded ISBI 2012 to {out_dir}: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))
    if as_bool(prepare):
        from scripts.data import prepare_isbi2012

        prepare_isbi2012(out_dir, out_dir / "prepared", val_slices=tuple(val_slices))
    return out_dir


if __name__ == "__main__":
    from scripts import one_line_errors

    one_line_errors()
    logging.basicConfig(level=logging.INFO)
    try:
        fire.Fire({"dsb2018": download_dsb2018, "isbi2012": download_isbi2012})
    except ConnectionError as e:  # one line, not a traceback
        raise SystemExit(f"error: {e}") from None
