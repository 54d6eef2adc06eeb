"""torchvision importable whatever build of torch is installed.

A torchvision wheel built for another variant of torch (the CUDA wheel of 0.28.0 beside torch's
CPU build) cannot load its compiled operators (nms, roi_align, ...); its import then fails while
declaring fake kernels for two of them, and so does every import of ``transformers``, which loads
torchvision when it is installed. The model definitions (ResNet-18) and ``transformers`` need none
of these operators: their schemas are declared (with no kernel) and the import is retried.
Call :func:`import_torchvision` before anything imports torchvision or ``transformers``.
"""

from __future__ import annotations

import sys

import torch

_FRAGMENTS: list = []  # the torch.library fragments declaring the schemas, kept alive


def import_torchvision():
    """The torchvision module, or None when it is not installed."""
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _FRAGMENTS.append(lib)
        import torchvision
    return torchvision
