"""The hand-designed light-weight network RSPNet is compared with:
torchvision's LRASPP-MobileNetV3-Large, built from scratch (no pretrained
weights, none downloaded), returning the class scores as a tensor like
``RSPNet``. torchvision is the optional extra ``bench``."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["REFERENCE_NAME", "INSTALL_HINT", "lraspp_mobilenet_v3", "reference_unavailable"]

REFERENCE_NAME = "LRASPP-MobileNetV3-Large"
INSTALL_HINT = "pip install -e .[bench]"


class LRASPP(nn.Module):
    """``torchvision.models.segmentation.lraspp_mobilenet_v3_large`` for
    ``num_classes`` classes, random weights; ``forward`` gives its ``"out"``."""

    def __init__(self, num_classes: int):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)["out"]


def lraspp_mobilenet_v3(num_classes: int = 19) -> nn.Module:
    return LRASPP(num_classes)


def reference_unavailable() -> str | None:
    """None when torchvision can build the reference, else why not (one line,
    with the install hint)."""
    try:
        import torchvision.models.segmentation  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - missing, or a build that does not match torch
        reason = "torchvision is not installed" if isinstance(exc, ModuleNotFoundError) else \
            f"torchvision does not import ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
        return f"{REFERENCE_NAME} reference skipped: {reason}; {INSTALL_HINT}"
    return None
