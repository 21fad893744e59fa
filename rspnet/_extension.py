"""Loading of the compiled extension ``rspnet._C``, never fatally.

The build writes ``_C_build.json`` beside the library. It is read *before*
the library is loaded, so a library built for another torch (which could
crash the process when loaded) or from sources edited since (stale) is
refused with a warning and rspnet falls back to its reference kernels.
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import warnings

import torch

from ._build_meta import BUILD_INFO_FILE, REBUILD_COMMAND, source_hash

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_state: dict | None = None


def _find_problem() -> tuple[str | None, dict]:
    libs = glob.glob(os.path.join(_PKG_DIR, "_C.*.so")) + glob.glob(os.path.join(_PKG_DIR, "_C.*.pyd"))
    if not libs:
        return "not built", {}
    info_path = os.path.join(_PKG_DIR, BUILD_INFO_FILE)
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return f"missing its build record ({BUILD_INFO_FILE})", {}
    if info.get("torch_version") != torch.__version__:
        return f"built for torch {info.get('torch_version')} but torch {torch.__version__} is installed", info
    src_root = os.path.dirname(_PKG_DIR)
    if os.path.exists(os.path.join(src_root, "setup.py")):  # editable install: sources beside the package
        current = source_hash(os.path.join(src_root, "csrc"))
        if current is not None and info.get("source_hash") not in (None, current):
            return "stale (csrc/ changed since it was built)", info
    try:
        importlib.import_module("rspnet._C")
    except (ImportError, OSError) as exc:
        return f"not loadable ({exc})", info
    return None, info


def load() -> dict:
    """Load ``_C`` once; returns ``{"loaded", "problem", "info"}``.

    Warns once (per process) when the extension cannot be used."""
    global _state
    if _state is None:
        problem, info = _find_problem()
        _state = {"loaded": problem is None, "problem": problem, "info": info}
        if problem is not None:
            warnings.warn(
                f"rspnet: the compiled extension rspnet._C is {problem}; the C++/CUDA kernels are "
                f"disabled and rspnet.ops falls back to Triton or the plain-PyTorch reference. "
                f"Rebuild with:\n    {REBUILD_COMMAND}",
                RuntimeWarning, stacklevel=3)
    return _state
