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
# train.json overrides for the 0.12 network (models/nuclei_fast: channels 16..256, mask + centre, no contact map), a
# quarter of the default network's work: for the tests of resuming, determinism and torchrun, which do not judge
# the default recipe (the training tests of test_bundle.py run it as it ships)
NUCLEI_FAST = ("--network_def#channels", "[16,32,64,128,256]", "--network_def#out_channels", "2", "--contact", "False")
DSB2018 = SHARED_DATA / "dsb2018_stage1_train" / "stage1_train"
DSB2018_FIXES = SHARED_DATA / "dsb2018_stage1_train_fixes"

for path in (BUNDLE, REPO):  # the bundle's scripts package; the repository's tools package
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _threads_per_worker() -> int:
    """CPU threads for each pytest-xdist worker and the processes it starts: the cores shared out among the workers.
    On two cores, two concurrent trainings at PyTorch's default (a thread per core, so four threads) took 2.1x as long
    as at one thread each (README, Tests)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    # inherited by every process a test starts; this worker's own in-process tests follow it too
    os.environ["OMP_NUM_THREADS"] = str(_threads_per_worker())
    import torch

    torch.set_num_threads(_threads_per_worker())


def run_module(
    module: str,
    *args: str,
    check: bool = True,
    nproc: int = 1,
    stop_after: tuple[int, str] | None = None,
    cwd: Path = BUNDLE,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """The tests' one launcher: ``python -m <module> <args>`` in ``cwd`` (the bundle root, as users run it), output
    captured as text.

    - ``check``: fail the test with the command and its output on a non-zero exit (``False``: return it anyway).
    - ``nproc`` > 1: under ``torchrun`` (standalone, one node, ``nproc`` processes, gloo on CPU, one thread each).
    - ``stop_after=(n, pattern)``: the process exits at once with status 137, without any clean-up, as a SIGKILL would
      stop it, right after it has completed its ``n``-th file whose name matches the glob ``pattern`` (every atomic
      write ends in ``os.replace`` or ``os.rename``; :mod:`stop_after`): a deterministic interruption, no timer (of
      the launching process: not with ``nproc``).
    """
    cmd = [sys.executable]
    if stop_after is not None:
        cmd += [str(Path(__file__).with_name("stop_after.py")), str(stop_after[0]), stop_after[1]]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
        env = {"OMP_NUM_THREADS": "1", **(env or {})}
    cmd += ["-m", module, *args]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def run_bundle(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` through :func:`run_module` (same keywords)."""
    return run_module("monai.bundle", *args, **kwargs)


@pytest.fixture(scope="session")
def dsb2018_dir() -> Path:
    if not DSB2018.is_dir():
        pytest.skip(f"needs DSB2018 stage1_train at {DSB2018}: set R2ATTUNET_DATA, or {GET_DATA['dsb2018']}")
    return DSB2018


def _runs_processes(function) -> bool:
    names = set(getattr(getattr(function, "__code__", None), "co_names", ()))
    return bool(names & {"run_bundle", "run_module", "torchrun", "subprocess", "_bundle", "report"})


def pytest_collection_modifyitems(config, items):
    """Tests that run the bundle (or anything) in a subprocess, themselves or through a fixture, carry an explicit
    ``@pytest.mark.slow`` (or their module's ``pytestmark``), so that ``pytest -m "not slow"`` is the quick loop:
    collection stops, naming them, when one does not."""
    unmarked = []
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        runs = _runs_processes(getattr(item, "function", None)) or any(_runs_processes(d[-1].func) for d in defs if d)
        if runs and item.get_closest_marker("slow") is None:
            unmarked.append(item.nodeid)
    if unmarked:
        raise pytest.UsageError("these tests run subprocesses but are not marked slow: " + ", ".join(unmarked))
