"""Lets ``import torchvision`` work beside the CPU build of torch in the MONAI Label test environment.

PyPI's torchvision wheels for Linux are CUDA builds: their C++ ops cannot load with a CPU torch. torchvision
tolerates that, except that it registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally, so ``import torchvision`` (and with it ``import monailabel``) fails with "operator
torchvision::nms does not exist". Installed by ``.ci/monailabel_env`` (through a ``.pth`` file) only when that import
fails, this declares the two schemas just before torchvision is first imported. torchvision's Python code, which
MONAI Label uses (``torchvision.utils``), then works; its C++ ops (box operations for detection) stay unavailable.
"""

import importlib.abc
import sys


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            if torch.version.cuda is None:  # CPU torch: torchvision's own op library cannot load
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
                _libraries.append(lib)  # the declarations live as long as the Library object
        return None  # the regular finders import torchvision itself


_libraries: list = []
sys.meta_path.insert(0, _DeclareTorchvisionOps())
