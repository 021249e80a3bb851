"""Shared paths and helpers: tests run the bundle from its root, as users do, on the shipped sample and on the
real datasets in ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SAMPLE = BUNDLE / "sample_data" / "dsb2018"
# the real datasets some tests read: ../shared/data on the development machines and in CI, or R2ATTUNET_DATA
SHARED_DATA = Path(os.environ.get("R2ATTUNET_DATA", REPO / ".." / "shared" / "data")).resolve()
GET_DATA = {  # how a user gets each dataset into SHARED_DATA (README, Tests)
    "dsb2018": "python -m scripts.download dsb2018 --out $R2ATTUNET_DATA/dsb2018_stage1_train (from bundle/)",
    "isbi2012": "python -m scripts.download isbi2012 --out $R2ATTUNET_DATA/isbi2012 (from bundle/)",
    "vnc": "git clone https://github.com/unidesigner/groundtruth-drosophila-vnc $R2ATTUNET_DATA/drosophila_vnc_sstem",
}
DSB2018 = SHARED_DATA / "dsb2018_stage1_train" / "stage1_train"
DSB2018_FIXES = SHARED_DATA / "dsb2018_stage1_train_fixes"

for path in (BUNDLE, REPO):  # the bundle's scripts package; the repository's tools package
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def run_bundle(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` from the bundle root; fails the test with the output on a non-zero exit."""
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(
        cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def dsb2018_dir() -> Path:
    if not DSB2018.is_dir():
        pytest.skip(f"needs DSB2018 stage1_train at {DSB2018}: set R2ATTUNET_DATA, or {GET_DATA['dsb2018']}")
    return DSB2018


# whole modules that train, start servers or run torchrun; other tests are slow when they (or a fixture they use) run
# a subprocess: ``pytest -m "not slow"`` is the quick loop
SLOW_MODULES = {"test_monailabel", "test_distributed", "test_pretrained", "test_benchmark", "test_reliability"}


def _runs_processes(function) -> bool:
    names = set(getattr(getattr(function, "__code__", None), "co_names", ()))
    return bool(names & {"run_bundle", "subprocess", "_bundle", "report"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if (
            item.module.__name__ in SLOW_MODULES
            or _runs_processes(getattr(item, "function", None))
            or any(_runs_processes(d[-1].func) for d in defs if d)
        ):
            item.add_marker(pytest.mark.slow)
