"""A missing, stale or foreign rspnet._C must never break `import rspnet.ops`:
one warning with the rebuild command, then the reference/Triton kernels."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import warnings, torch
warnings.simplefilter("always")
import rspnet.ops as ops
from rspnet.ops import _backend
import rspnet.ops.mixed_sum, rspnet.info  # further imports must not warn again
w = torch.tensor([0.5, 2.0]); xs = [torch.ones(3), torch.arange(3.0)]
print("RESULT", ops.mixed_sum(w, xs).tolist(), _backend.select("mixed_sum", xs[0], None))
"""


def _copy_package(tmp_path, with_library=True):
    pkg = tmp_path / "rspnet"
    shutil.copytree(os.path.join(ROOT, "rspnet"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", *([] if with_library else ["_C.*"])))
    shutil.copytree(os.path.join(ROOT, "kernels"), pkg / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def _run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("RSPNET_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
    return result, proc.stderr


def _built():
    return os.path.exists(os.path.join(ROOT, "rspnet", "_C_build.json"))


def _expect_fallback(tmp_path, reason):
    result, err = _run(tmp_path)
    assert result == "RESULT [0.5, 2.5, 4.5] reference"
    assert err.count("rspnet: the compiled extension rspnet._C is") == 1, err
    assert reason in err
    assert "pip install -e . --no-build-isolation" in err


def test_missing_library(tmp_path):
    _copy_package(tmp_path, with_library=False)
    _expect_fallback(tmp_path, "is not built")


@pytest.mark.skipif(not _built(), reason="the extension is not built in this checkout")
def test_library_built_for_another_torch(tmp_path):
    pkg = _copy_package(tmp_path)
    info = json.loads((pkg / "_C_build.json").read_text())
    info["torch_version"] = "1.0.0"
    (pkg / "_C_build.json").write_text(json.dumps(info))
    _expect_fallback(tmp_path, "built for torch 1.0.0")


@pytest.mark.skipif(not _built(), reason="the extension is not built in this checkout")
def test_stale_library(tmp_path):
    _copy_package(tmp_path)
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    with open(tmp_path / "csrc" / "rspnet.cpp", "a") as f:
        f.write("\n// edited after the build\n")
    _expect_fallback(tmp_path, "stale (csrc/ changed since it was built)")


@pytest.mark.skipif(not _built(), reason="the extension is not built in this checkout")
def test_good_library_loads_without_warning(tmp_path):
    _copy_package(tmp_path)
    result, err = _run(tmp_path)
    assert result == "RESULT [0.5, 2.5, 4.5] cpp"
    assert "rspnet: the compiled extension" not in err
