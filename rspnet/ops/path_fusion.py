"""Temporary: forwards to the reference until the fused backends land."""
from .reference import path_fusion_ref as path_fusion  # noqa: F401
