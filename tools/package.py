"""Package the bundle for release in the Model Zoo archive format.

``python -m tools.package archive --out DIR [--name r2attunet_microscopy_segmentation] [--url_base URL]``

(from the repository root) writes ``DIR/<name>_v<version>.zip`` (``version`` from ``configs/metadata.json``) with
one top folder ``<name>/`` holding ``configs/``, ``scripts/``, ``models/`` (``model.pt``, ``ensemble/*.pt`` and,
when exported, ``model.ts`` and ``model.onnx``; no training checkpoints), ``docs/``, ``LICENSE`` and
``large_files.yml``, which names every weights
file with its MD5 and ``url`` ``<url_base>/<path>`` (default base :data:`URL_BASE`). This is the layout that
``python -m monai.bundle download --name <name> ...`` unpacks into ``<bundle_dir>/<name>``; attached to a GitHub
release it is what ``--source github --repo owner/repo/tag`` fetches. Entries are sorted with fixed timestamps, so
the same files give the same archive, which is written atomically. Files over 25 MB (the Model Zoo's limit for a
file in a bundle) are refused.

``python -m tools.package bioimageio --preset nuclei|em2d|em3d|em2d_mito --out DIR [--image FILE]`` writes a
BioImage Model Zoo package of a preset (:mod:`tools.bmz`).

``python -m tools.package large_files [--url_base URL]`` writes the same ``large_files.yml`` into the bundle root, as
the Model Zoo wants it there; run it whenever the weights change (a test checks that it matches them).
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import fire

from scripts.download import file_md5
from scripts.files import atomic_path, write_text_atomic
from tools import BUNDLE

__all__ = ["BUNDLE_NAME", "MAX_FILE_BYTES", "bundle_files", "large_files_yaml", "package"]

logger = logging.getLogger(__name__)

BUNDLE_NAME = "r2attunet_microscopy_segmentation"
MAX_FILE_BYTES = 25 * 1024 * 1024
WEIGHTS = (
    "models/model.pt",  # nuclei: channels 32..512, mask + centre map (performance.md)
    "models/nuclei_contact/model.pt",  # nuclei, the 0.13 default: and a contact map (--ckpt_dir models/nuclei_contact)
    "models/nuclei_fast/model.pt",  # nuclei, channels 16..256, mask + centre: the earlier default, a quarter the work
    "models/nuclei_fast/ensemble/*.pt",  # its top-3 checkpoint ensemble (--ckpt_dir models/nuclei_fast --ensemble true)
    "models/em2d/model.pt",  # EM presets (configs/em2d.json, configs/em3d.json)
    "models/em3d/model.pt",
    "models/em2d_mito/model.pt",  # configs/em2d.json + configs/em2d_mito.json: mitochondria, 2D
    "models/model.ts",
    "models/model.onnx",
)
# where released weights are hosted: the Model Zoo's storage release, one folder per bundle version
URL_BASE = "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1/{name}_v{version}"
_TREES = ("configs", "scripts", "docs")
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
_TIMESTAMP = (2022, 5, 30, 0, 0, 0)  # fixed entry time, as the Model Zoo's own packaging


def bundle_files(root: Path) -> tuple[list[str], list[str]]:
    """``(files, weights)``: the bundle-relative paths to archive (sorted, weights included) and the weights among
    them. Raises ``FileNotFoundError`` when ``models/model.pt`` or ``LICENSE`` is missing and ``ValueError`` naming
    every file over ``MAX_FILE_BYTES``."""
    root = Path(root)
    for required in ("configs/metadata.json", "models/model.pt", "LICENSE"):
        if not (root / required).is_file():
            raise FileNotFoundError(f"{root / required}: required in a released bundle, not found.")
    files = {"LICENSE"}
    for tree in _TREES:
        for p in (root / tree).rglob("*"):
            if p.is_file() and not _SKIP_PARTS & set(p.parts) and p.suffix != ".pyc":
                files.add(p.relative_to(root).as_posix())
    weights = sorted({p.relative_to(root).as_posix() for pattern in WEIGHTS for p in root.glob(pattern)})
    files.update(weights)
    too_big = [
        f"{root / f} ({(root / f).stat().st_size / 2**20:.1f} MB)"
        for f in sorted(files)
        if (root / f).stat().st_size > MAX_FILE_BYTES
    ]
    if too_big:
        raise ValueError(f"files over {MAX_FILE_BYTES // 2**20} MB cannot be released: {', '.join(too_big)}")
    return sorted(files), weights


def large_files_yaml(root: Path, weights: list[str], url_base: str | None = None) -> str:
    """The Model Zoo's ``large_files.yml``: one entry per weights file with ``path``, ``hash_val`` (MD5),
    ``hash_type`` and, with ``url_base``, ``url``."""
    lines = ["large_files:"]
    for w in weights:
        lines.append(f"  - path: {json.dumps(w)}")
        if url_base:
            lines.append(f'    url: "{url_base.rstrip("/")}/{w}"')
        lines.append(f"    hash_val: {json.dumps(file_md5(Path(root) / w))}")
        lines.append('    hash_type: "md5"')
    return "\n".join(lines) + "\n"


def write_large_files(bundle_root: str | None = None, url_base: str = URL_BASE, name: str = BUNDLE_NAME) -> str:
    """Write the Model Zoo's ``large_files.yml`` into the bundle root (atomically): every weights file with its MD5
    and its url under ``url_base`` (``{name}`` and ``{version}`` filled in; a ``file://`` base serves a local copy).
    ``python -m monai.bundle download_large_files --bundle_path bundle`` fetches the weights it lists."""
    root = Path(bundle_root) if bundle_root else BUNDLE
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    _, weights = bundle_files(root)
    text = large_files_yaml(root, weights, url_base.format(name=name, version=version))
    write_text_atomic(text, root / "large_files.yml")
    return str(root / "large_files.yml")


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=9)


def package(out: str, name: str = BUNDLE_NAME, url_base: str | None = URL_BASE, bundle_root: str | None = None) -> str:
    """Write ``<out>/<name>_v<version>.zip`` from the bundle at ``bundle_root`` (default: this bundle); returns its
    path. Raises ``ValueError`` naming ``metadata.json`` when its ``version`` has no ``changelog`` entry."""
    root = Path(bundle_root) if bundle_root else BUNDLE
    meta_file = root / "configs" / "metadata.json"
    files, weights = bundle_files(root)
    metadata = json.loads(meta_file.read_text())
    version = metadata.get("version")
    if not version or version not in metadata.get("changelog", {}):
        raise ValueError(f"{meta_file}: 'version' ({version}) must be set and have an entry in 'changelog'.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for f in files:
            _add(archive, f"{name}/{f}", (root / f).read_bytes())
        base = url_base.format(name=name, version=version) if url_base else None
        _add(archive, f"{name}/large_files.yml", large_files_yaml(root, weights, base).encode())
    logger.info(f"{target}: {len(files) + 1} files, {target.stat().st_size / 2**20:.1f} MB")
    return str(target)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tools.bmz import package_bioimageio

    fire.Fire({"archive": package, "large_files": write_large_files, "bioimageio": package_bioimageio})
