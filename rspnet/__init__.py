"""rspnet: memory-efficient NAS for light-weight semantic segmentation (RSPNet)."""
__version__ = "0.1.0"
