"""Networks built from a searched architecture."""
from .rspnet import RSPNet

__all__ = ["RSPNet"]
