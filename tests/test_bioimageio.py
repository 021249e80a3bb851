"""BioImage Model Zoo packages (tools/bmz.py): each preset's package, built from real images, passes ``bioimageio
test`` offline for its three weight formats, whose outputs must reproduce the bundle's own inference within 1e-4
(the package's reproducibility tolerance, no element excepted)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from conftest import GET_DATA, REPO, SHARED_DATA, run_module

pytest.importorskip("bioimageio.core", reason="needs the bioimageio extra: pip install -e '.[bioimageio]'")

from bioimageio.core import test_model as bioimageio_test  # noqa: E402

from scripts import InputError  # noqa: E402
from tools.bmz import TOLERANCE, package_bioimageio  # noqa: E402

ISBI_TEST = SHARED_DATA / "isbi2012" / "test" / "0.png"  # an unlabelled ISBI 2012 test slice
VNC_RAW = (
    SHARED_DATA / "drosophila_vnc_sstem" / "stack1" / "raw"
)  # sections 12-15: the EM presets never trained on them


def _image(preset: str, tmp_path) -> str | None:
    if preset == "nuclei":
        return None  # the shipped sample image
    if preset == "em2d":
        if not ISBI_TEST.is_file():
            pytest.skip(f"needs ISBI 2012 at {ISBI_TEST.parent}: {GET_DATA['isbi2012']}")
        return str(ISBI_TEST)
    if not VNC_RAW.is_dir():
        pytest.skip(f"needs the Drosophila VNC stack at {VNC_RAW}: {GET_DATA['vnc']}")
    if preset == "em2d_mito":
        return str(VNC_RAW / "14.tif")
    stack = tmp_path / "vnc_12_15.tif"
    tifffile.imwrite(stack, np.stack([tifffile.imread(VNC_RAW / f"{k}.tif") for k in range(12, 16)]))
    return str(stack)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["nuclei", "em2d", "em3d", "em2d_mito"])
def test_package_passes_bioimageio_test(preset, tmp_path):
    package = package_bioimageio(preset, str(tmp_path / "out"), _image(preset, tmp_path))
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        names = set(z.namelist())
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert {"README.md", "cover.png", "test_input.npy", "test_output.npy", "networks.py", "weights.pt"} <= names
    tolerance = rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]
    assert tolerance["absolute_tolerance"] == TOLERANCE == 1e-4 and tolerance["mismatched_elements_per_million"] == 0
    axes = [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]]
    assert axes == (["batch", "channel", "z", "y", "x"] if preset == "em3d" else ["batch", "channel", "y", "x"])
    # the format's saver appends a last ensure_dtype
    steps = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert [s for s in steps if s != "ensure_dtype"] == ["zero_mean_unit_variance"]
    assert [p["id"] for p in rdf["outputs"][0]["postprocessing"] if p["id"] != "ensure_dtype"] == ["sigmoid"]
    readme = (tmp_path / "out" / preset / "README.md").read_text()
    assert "## Validation" in readme and "cannot express" in readme
    expected = np.load(tmp_path / "out" / preset / "test_output.npy")
    assert 0.02 < (expected[:, 0] > 0.5).mean() < 0.9  # real structures in the reference, not an empty output
    summary = bioimageio_test(package)
    assert summary.status == "passed", summary.format()
    reproduced = {
        d.loc[-1] for d in summary.details if d.name.startswith("Reproduce test outputs") and d.status == "passed"
    }
    assert reproduced == {"pytorch_state_dict", "torchscript", "onnx"}


@pytest.mark.slow
def test_package_command_line_names_what_is_missing(tmp_path):
    proc = run_module("tools.package", "bioimageio", "--preset", "em2d", "--out", str(tmp_path), cwd=REPO, check=False)
    assert proc.returncode != 0 and "--image is needed for preset 'em2d'" in proc.stderr
    assert "scripts.download isbi2012" in proc.stderr
    with pytest.raises(InputError, match="unknown preset 'cells'.*em2d_mito"):
        package_bioimageio("cells", str(tmp_path))
