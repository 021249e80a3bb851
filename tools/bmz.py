"""BioImage Model Zoo (bioimage.io) packages of the bundle's presets, model format 0.5.

``python -m tools.package bioimageio --preset nuclei|em2d|em3d|em2d_mito --out DIR [--image FILE]`` (from the
repository root; needs the ``bioimageio`` extra) writes ``DIR/<preset>/`` (``rdf.yaml`` and its files) and
``DIR/r2attunet_<preset>.zip``, the package to upload or to open in napari, deepImageJ, QuPath or ilastik:

- weights: ``pytorch_state_dict`` (the preset's shipped ``model.pt`` with ``scripts/networks.py`` as architecture,
  :class:`~scripts.networks.R2AttUNet` with the preset's ``network_def`` arguments and ``axes_order="zyx"``), and
  ``torchscript`` and ``onnx`` converted from it (BatchNorm folded);
- one input ``image``, axes ``bcyx`` (2D presets) or ``bczyx`` (``em3d``), sizes ``{min, step}`` from the network's
  poolings, the bundle's ``NormalizeIntensityd`` as ``zero_mean_unit_variance`` over the whole image; one output
  ``probabilities``, the sigmoid of the network's logits, one named channel per output, with a halo for tiling;
- test tensors: a crop of a real image (``--image``, default a shipped DSB2018 sample image for ``nuclei``), one
  window (``patch_size``) of the preset's inferer, as the input, and as the output the bundle's own inference of
  that crop through the preset's config (its reader, preprocessing, inferer; fp32, no flips), so ``bioimageio
  test`` checks the package against the bundle;
- a cover image, a README with a Validation section (the scores and splits of the bundle's docs), license,
  citations (the paper, the data) and tags.

Instance post-processing (nuclei seeds and watershed, neuron agglomeration, object tables) cannot be expressed in
the format and stays in the bundle; the package's README says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.transforms import EnsureTyped, NormalizeIntensityd
from PIL import Image

from scripts import InputError, MissingInputError
from scripts.files import reverse_axes
from scripts.networks import R2AttUNet, fold_batch_norm, load_weights, read_state_dict, weights_arguments
from scripts.presets import config_files
from tools import BUNDLE

__all__ = ["PRESETS", "package_bioimageio", "preset_parser", "reference_prediction"]

logger = logging.getLogger(__name__)

REPO = BUNDLE.parent
SAMPLE_IMAGE = "sample_data/dsb2018/images/4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64.png"
GET_DATA = {
    "isbi2012": "cd bundle && python -m scripts.download isbi2012 --out data/isbi2012",
    "vnc": "git clone https://github.com/unidesigner/groundtruth-drosophila-vnc data/drosophila_vnc_sstem",
}
_PAPER = {
    "text": "Das, Uddin, Ghosh et al. Recurrent Residual Attention U-Net (R2AttU-Net) with Focal Tversky loss for "
    "medical and microscopy image segmentation",
    "url": "https://github.com/Project-MONAI/model-zoo",
}
_DSB2018 = {
    "text": "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
    "Nature Methods 16, 1247-1253 (2019)",
    "doi": "10.1038/s41592-019-0612-7",
}
_ISBI2012 = {
    "text": "Arganda-Carreras et al. Crowdsourcing the creation of image segmentation algorithms for connectomics. "
    "Frontiers in Neuroanatomy 9, 142 (2015)",
    "doi": "10.3389/fnana.2015.00142",
}
_VNC = {
    "text": "Gerhard, Funke, Martel, Cardona, Fetter. Segmented anisotropic ssTEM dataset of neural tissue (2013)",
    "doi": "10.6084/m9.figshare.856713",
}
# per preset (scripts.presets): what the output channels are, the validation report in docs/figures
# (and the entry of it that scores this preset), data citations, license of the weights, tags
PRESETS: dict[str, dict[str, Any]] = {
    "nuclei": {
        "description": "Cell nuclei in 2D light microscopy (fluorescence, brightfield, stained tissue in gray)",
        "channels": ["nucleus", "centre", "contact"],
        "report": ("objects_report.json", None),
        "cite": [_PAPER, _DSB2018],
        "license": "Apache-2.0",
        "tags": ["nuclei", "fluorescence-light-microscopy", "brightfield-microscopy", "2d", "semantic-segmentation"],
        "data": f"bundle/{SAMPLE_IMAGE}",
    },
    "em2d": {
        "description": "Neuron membranes in 2D serial-section electron microscopy (ISBI 2012)",
        "channels": ["membrane"],
        "report": ("em2d_neurons_report.json", None),
        "cite": [_PAPER, _ISBI2012],
        "license": "Apache-2.0",
        "tags": ["electron-microscopy", "membranes", "neurons", "2d", "semantic-segmentation"],
        "data": f"ISBI 2012 test-volume.tif (unlabelled test slices): {GET_DATA['isbi2012']}",
    },
    "em3d": {
        "description": "Mitochondria in anisotropic 3D ssTEM volumes (Drosophila VNC)",
        "channels": ["mitochondrion"],
        "report": ("em_mitochondria_objects.json", "3D (em3d)"),
        "cite": [_PAPER, _VNC],
        "license": "CC-BY-NC-SA-3.0",
        "tags": ["electron-microscopy", "mitochondria", "3d", "semantic-segmentation"],
        "data": f"a (Z, Y, X) TIFF of Drosophila VNC sections: {GET_DATA['vnc']}",
    },
    "em2d_mito": {
        "description": "Mitochondria in 2D ssTEM sections (Drosophila VNC), section by section",
        "channels": ["mitochondrion"],
        "report": ("em_mitochondria_objects.json", "2D sections (em2d_mito)"),
        "cite": [_PAPER, _VNC],
        "license": "CC-BY-NC-SA-3.0",
        "tags": ["electron-microscopy", "mitochondria", "2d", "semantic-segmentation"],
        "data": f"a Drosophila VNC section (PNG or TIFF): {GET_DATA['vnc']}",
    },
}
TOLERANCE = 1e-4  # the largest difference allowed between the package's outputs and the bundle's, in probability
HALO = 32  # output pixels to discard at each in-plane tile border, a quarter of the bundle's 256-pixel window overlap


def preset_parser(preset: str, **overrides: Any) -> ConfigParser:
    """The preset's inference config (``inference.json`` with the preset's files merged over it, as the docs' run
    commands) with ``overrides``; fp32, no flips, no objects and no ensemble, as the package's reference."""
    parser = ConfigParser()
    parser.read_config(config_files(preset, BUNDLE))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "precision": "fp32",
            "tta": False,
            "objects": False,
            "ensemble": False,
            "progress_bar": False,
        }
    )
    parser.update(overrides)
    return parser


def network_kwargs(parser: ConfigParser) -> dict[str, Any]:
    """The :class:`~scripts.networks.R2AttUNet` arguments of the config's ``network_def`` (JSON values), shaped as
    its weights need (:func:`~scripts.networks.weights_arguments`, as inference builds it)."""
    kwargs = {}
    for key in parser["network_def"]:
        if not key.startswith("_") and key not in ("weights_file", "load_weights"):
            value = parser.get_parsed_content(f"network_def#{key}")
            kwargs[key] = json.loads(json.dumps(value, default=list))
    return weights_arguments(Path(parser.get_parsed_content("ckpt_dir")) / "model.pt", **kwargs)


def _loading_steps(preprocessing: Any) -> list[Any]:
    """The config's preprocessing up to its ``NormalizeIntensityd``. Raises ``InputError`` when the preprocessing
    does anything after loading that the package's one ``zero_mean_unit_variance`` step would not reproduce."""
    steps = list(preprocessing.transforms)
    norms = [i for i, t in enumerate(steps) if isinstance(t, NormalizeIntensityd)]
    after = steps[norms[0] + 1 :] if norms else []
    if len(norms) != 1 or any(not isinstance(t, EnsureTyped) for t in after):
        raise InputError(
            "the preset's preprocessing is not loading, NormalizeIntensityd, EnsureTyped: the bioimage.io package "
            f"cannot express it ({[type(t).__name__ for t in steps]})"
        )
    normalize = steps[norms[0]].normalizer
    if normalize.subtrahend is not None or normalize.divisor is not None or normalize.nonzero:
        raise InputError("the preset's NormalizeIntensityd is not a plain whole-image z-score")
    return steps[: norms[0]]


def reference_prediction(parser: ConfigParser, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, probabilities)`` of ``image`` through the preset's config: ``raw`` the pixels as its reader loads
    them, before normalisation, ``(1, 1, [Z,] Y, X)`` float32; ``probabilities`` the sigmoid of its inferer's output
    with the preset's weights (BatchNorm folded, as the bundle runs), ``(1, C, [Z,] Y, X)`` float32."""
    preprocessing = parser.get_parsed_content("preprocessing")
    loading = _loading_steps(preprocessing)
    network = parser.get_parsed_content("network")
    load_weights(network, Path(parser.get_parsed_content("ckpt_dir")) / "model.pt", "cpu", fold=True)
    inferer = parser.get_parsed_content("inferer")
    data = preprocessing({"image": str(image)})
    raw = {"image": str(image)}
    for step in loading:
        raw = step(raw)
    with torch.no_grad():
        logits = inferer(data["image"][None].to(torch.float32), network)
    spatial_dims = parser.get_parsed_content("network_def#spatial_dims")
    return _numpy_axes(torch.as_tensor(raw["image"])[None], spatial_dims), _numpy_axes(
        torch.sigmoid(torch.as_tensor(logits)), spatial_dims
    )


def _numpy_axes(tensor: torch.Tensor, spatial_dims: int) -> np.ndarray:
    """``(B, C, X, Y[, Z])`` in the bundle's order to numpy's ``(B, C, [Z,] Y, X)``; a 2D preset's stack of one
    section (``(B, C, X, Y, 1)``, the EM presets' reader) loses its section axis."""
    array = np.asarray(tensor.detach().cpu(), dtype=np.float32)
    if spatial_dims == 2 and array.ndim == 5:
        if array.shape[-1] != 1:
            raise InputError(f"a 2D preset's package takes one image, got a stack of {array.shape[-1]} sections")
        array = array[..., 0]
    return reverse_axes(array, leading=2, contiguous=True)


def crop_image(source: Path, size: tuple[int, ...], out_dir: Path) -> Path:
    """The centre crop of ``size`` (``(Y, X)``, or ``(Z, Y, X)`` for a stack) of the image or stack at ``source``,
    written losslessly into ``out_dir`` in a format the bundle reads (PNG for a 2D 8-bit image, TIFF otherwise)."""
    if not source.is_file():
        raise MissingInputError(f"{source}: no such image")
    if source.suffix.lower() in (".tif", ".tiff"):
        array = tifffile.imread(source)
    else:
        with Image.open(source) as im:
            array = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I", "F") else im)
    if array.ndim != len(size) and not (array.ndim == 3 and len(size) == 2 and array.shape[0] == 1):
        raise InputError(f"{source}: expected a {len(size)}D image or stack, got shape {array.shape}")
    array = array.reshape(array.shape[-len(size) :])
    if any(s < c for s, c in zip(array.shape, size, strict=True)):
        raise InputError(f"{source}: {array.shape} is smaller than the crop {size}")
    start = [(s - c) // 2 for s, c in zip(array.shape, size, strict=True)]
    crop = array[tuple(slice(a, a + c) for a, c in zip(start, size, strict=True))]
    if crop.ndim == 2 and crop.dtype == np.uint8:
        path = out_dir / f"{source.stem}.png"
        Image.fromarray(crop).save(path)
    else:
        path = out_dir / f"{source.stem}.tif"
        tifffile.imwrite(path, crop, photometric="minisblack")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file(path: Path) -> dict[str, str]:
    """A file of the package as the format wants it: name and SHA-256."""
    return {"source": path.name, "sha256": _sha256(path)}


def _sample(array: np.ndarray, path: Path) -> Path:
    """A sample tensor for people to look at, as TIFF (the format reads it with imageio)."""
    tifffile.imwrite(path, np.ascontiguousarray(array), photometric="minisblack")
    return path


def _size_steps(kwargs: dict[str, Any]) -> list[int]:
    """Per spatial axis in numpy order ``([Z,] Y, X)``: the product of the network's pooling strides, the step
    (and, times the halo margin, the minimum) of the input size."""
    dims = kwargs["spatial_dims"]
    strides = kwargs.get("strides") or [2] * (len(kwargs["channels"]) - 1)
    steps = [1] * dims
    for s in strides:
        for d, v in enumerate([s] * dims if isinstance(s, int) else s):
            steps[d] *= int(v)
    return steps[::-1]


def _cover(raw: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """Input and first-channel probabilities side by side (the middle section of a volume), 2:1 PNG."""
    image, prob = raw[0, 0], probabilities[0, 0]
    if image.ndim == 3:
        image, prob = image[image.shape[0] // 2], prob[prob.shape[0] // 2]
    lo, hi = np.percentile(image, (0.5, 99.5))
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    left = np.stack([gray] * 3, -1)
    right = left * (1 - 0.6 * prob[..., None]) + 0.6 * prob[..., None] * np.array([1.0, 0.8, 0.0])  # yellow
    Image.fromarray((np.concatenate([left, right], 1) * 255).round().astype(np.uint8)).save(path)


def _validation_section(preset: str) -> str:
    """The README's Validation section: the preset's scores and split from the bundle's docs (docs/figures)."""
    file, entry = PRESETS[preset]["report"]
    report = json.loads((BUNDLE / "docs" / "figures" / file).read_text())
    scores = report["scores"][entry] if entry else report["scores"]["all"]
    split = report.get("split") or Path(report.get("label", "")).name
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scores.items())
    return (
        "## Validation\n\n"
        f"Scores of the bundle's inference with these weights on images it never trained on ({split} split; "
        f"`bundle/docs/figures/{file}`{f', entry {entry!r}' if entry else ''}; how they were measured: "
        "`bundle/docs/performance.md` and `bundle/docs/em.md`):\n\n| metric | value |\n| --- | --- |\n"
        f"{rows}\n\n"
        "Object scores (DSB2018 score, V_rand/V_info, object F1) need the bundle's instance post-processing, which "
        "the bioimage.io format cannot express; the probabilities of this package are the bundle's up to 1e-4.\n"
    )


def _readme(preset: str, kwargs: dict[str, Any], channels: list[str]) -> str:
    spec = PRESETS[preset]
    run = ",".join(f"'configs/{Path(c).name}'" for c in config_files(preset, BUNDLE))
    return (
        f"# R2AttU-Net: {spec['description']}\n\n"
        "A Recurrent Residual Attention U-Net (R2AttU-Net, Das et al.) trained with the Focal Tversky loss, "
        "packaged from the MONAI bundle `r2attunet_microscopy_segmentation` "
        f"(preset `{preset}`, network {json.dumps(kwargs)}).\n\n"
        "## Input and output\n\n"
        "- Input `image`: one gray channel (convert colour images to gray first, e.g. luminance), any size that is "
        "a multiple of the size step; normalised to zero mean and unit variance over the whole image.\n"
        f"- Output `probabilities`: sigmoid probabilities, channels {', '.join(channels)}; threshold 0.5 for the "
        f"mask. Discard {HALO} pixels at tile borders when tiling.\n\n"
        "## Objects\n\n"
        "The bundle turns these probabilities into objects (nuclei instances by seeded watershed, neuron segments, "
        "mitochondria components) with a table of measurements. The bioimage.io format cannot express that "
        "post-processing: for objects, run the bundle itself (or its napari plugin):\n\n"
        f'```bash\ncd bundle && python -m monai.bundle run --config_file "[{run}]" '
        "--dataset_dir IMAGES --output_dir OUT\n```\n\n"
        f"{_validation_section(preset)}\n"
        "## License\n\n"
        f"Weights: {spec['license']}"
        + (" (trained on the CC BY-NC-SA 3.0 Drosophila VNC data)" if "NC" in spec["license"] else "")
        + "; code: Apache-2.0.\n"
    )


def _export(network: torch.nn.Module, example: torch.Tensor, out_dir: Path) -> tuple[Path, Path]:
    """TorchScript and ONNX files of ``network`` (eval, BatchNorm folded), dynamic batch and spatial sizes."""
    ts_path, onnx_path = out_dir / "weights.torchscript.pt", out_dir / "weights.onnx"
    torch.jit.save(torch.jit.script(network), str(ts_path))
    dims = {0: "batch", **{d: f"s{d}" for d in range(2, example.ndim)}}
    torch.onnx.export(
        network,
        (example,),
        str(onnx_path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": dims, "logits": dims},
        opset_version=17,
        dynamo=False,
    )
    return ts_path, onnx_path


def _environment(path: Path) -> Path:
    """The conda environment the ``pytorch_state_dict`` weights need: torch and MONAI (the architecture imports it)."""
    import monai

    path.write_text(
        "name: r2attunet\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10\n  - pip\n  - pip:\n"
        f"    - torch=={torch.__version__.split('+')[0]}\n    - monai=={monai.__version__}\n"
    )
    return path


def build_rdf(preset: str, folder: Path, image: Path | None = None) -> dict[str, Any]:
    """Write the package files of ``preset`` into ``folder`` and return its ``rdf.yaml`` content (format 0.5)."""
    config_files(preset, BUNDLE)  # an unknown preset stops here, with the presets there are
    spec = PRESETS[preset]
    if image is None:
        if not spec["data"].startswith("bundle/"):
            raise InputError(f"--image is needed for preset {preset!r}: {spec['data']}")
        image = REPO / spec["data"]
    parser = preset_parser(preset)
    kwargs = network_kwargs(parser)
    with tempfile.TemporaryDirectory() as tmp:
        # one window of the preset's sliding-window inferer: its outputs are then those of one network forward
        window = tuple(int(s) for s in reversed(parser.get_parsed_content("patch_size")))  # (X, Y[, Z]) -> numpy
        crop = crop_image(Path(image), window, Path(tmp))
        raw, probabilities = reference_prediction(parser, crop)
        sample_input = folder / f"sample_input{crop.suffix}"  # the crop as a file, for people to look at
        shutil.copyfile(crop, sample_input)
    dims = kwargs["spatial_dims"]
    out_channels = int(kwargs["out_channels"])
    channels = spec["channels"][:out_channels]
    if len(channels) != out_channels:
        raise InputError(f"preset {preset!r}: {out_channels} output channels, names known for {len(channels)}")
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", probabilities)
    _cover(raw, probabilities, folder / "cover.png")

    ckpt = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    state = read_state_dict(ckpt)
    torch.save(state, folder / "weights.pt")
    shutil.copyfile(BUNDLE / "scripts" / "networks.py", folder / "networks.py")
    package_kwargs = {**kwargs, "axes_order": "zyx"}
    network = R2AttUNet(**package_kwargs)
    network.load_state_dict(state)
    ts_path, onnx_path = _export(fold_batch_norm(network), torch.from_numpy(raw), folder)
    env = _environment(folder / "environment.yaml")
    (folder / "README.md").write_text(_readme(preset, kwargs, channels))

    steps = _size_steps(kwargs)
    names = ["z", "y", "x"][3 - dims :]
    in_axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": ["gray"]}]
    out_axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": channels}]
    for name, step in zip(names, steps, strict=True):
        margin = HALO if step > 1 else 0
        in_axes.append({"type": "space", "id": name, "size": {"min": step * (1 + 2 * margin // step), "step": step}})
        out_axes.append({"type": "space", "id": name, "size": {"tensor_id": "image", "axis_id": name}})
        if margin:
            out_axes[-1]["halo"] = margin
    torch_version = torch.__version__.split("+")[0]
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    sample_output = _sample(probabilities[0], folder / "sample_output.tif")
    return {
        "format_version": "0.5.12",
        "type": "model",
        "name": f"R2AttU-Net {preset}",
        "description": f"{spec['description']}: R2AttU-Net with the Focal Tversky loss, from a MONAI bundle",
        "version": version,
        "authors": [{"name": "R2AttU-Net bundle developers"}],
        "cite": spec["cite"],
        "license": spec["license"],
        "tags": [*spec["tags"], "pytorch", "monai", "r2attunet", "unet"],
        "documentation": _file(folder / "README.md"),
        "covers": [_file(folder / "cover.png")],
        "inputs": [
            {
                "id": "image",
                "description": "gray image, raw intensities",
                "axes": in_axes,
                "test_tensor": _file(folder / "test_input.npy"),
                "sample_tensor": _file(sample_input),
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", *names], "eps": 1e-6}},
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": f"sigmoid probabilities of {', '.join(channels)}",
                "axes": out_axes,
                "test_tensor": _file(folder / "test_output.npy"),
                "sample_tensor": _file(sample_output),
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        # bioimageio test: every weights format reproduces the bundle's probabilities within 1e-4, everywhere
        "config": {
            "bioimageio": {
                "reproducibility_tolerance": [
                    {"absolute_tolerance": TOLERANCE, "relative_tolerance": 0.0, "mismatched_elements_per_million": 0}
                ]
            }
        },
        "weights": {
            "pytorch_state_dict": {
                **_file(folder / "weights.pt"),
                "architecture": {
                    **_file(folder / "networks.py"),
                    "callable": "R2AttUNet",
                    "kwargs": package_kwargs,
                },
                "pytorch_version": torch_version,
                "dependencies": _file(env),
            },
            "torchscript": {
                **_file(ts_path),
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
            "onnx": {
                **_file(onnx_path),
                "opset_version": 17,
                "parent": "pytorch_state_dict",
            },
        },
    }


def package_bioimageio(preset: str, out: str, image: str | None = None) -> str:
    """Write ``<out>/<preset>/rdf.yaml`` with its files and ``<out>/r2attunet_<preset>.zip``, validated by
    ``bioimageio.spec`` (format only; ``bioimageio test <zip>`` runs the weights). Returns the zip's path."""
    try:
        from bioimageio.spec import load_model_description, save_bioimageio_package
        from bioimageio.spec._internal.io_utils import write_yaml
    except ImportError as e:
        raise InputError("bioimage.io packages need the bioimageio extra: pip install -e '.[bioimageio]'") from e
    out_dir = Path(out)
    folder = out_dir / preset
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rdf = build_rdf(preset, folder, Path(image) if image else None)
    write_yaml(rdf, folder / "rdf.yaml")
    descr = load_model_description(folder / "rdf.yaml", perform_io_checks=True)
    if not hasattr(descr, "weights"):
        raise RuntimeError(f"{folder / 'rdf.yaml'}: not a valid model description:\n{descr.validation_summary}")
    target = out_dir / f"r2attunet_{preset}.zip"
    save_bioimageio_package(descr, output_path=target)
    logger.info(f"{target}: bioimage.io model package ({preset}); test it with: bioimageio test {target}")
    return str(target)
