"""Build of rspnet._C: C++ CPU kernels always, CUDA kernels when possible.

Switches (environment):
  RSPNET_BUILD_CUDA=auto|0|1   auto: build CUDA kernels when torch is a CUDA
                               build and nvcc is found (no GPU needed)
  CUDA_HOME                    found from `nvcc` on PATH (or /usr/local/cuda)
                               when unset
  TORCH_CUDA_ARCH_LIST         default "9.0+PTX" (H100/H200, PTX for newer)
  MAX_JOBS                     parallel compile jobs (honoured by ninja)
"""
import glob
import importlib.util
import json
import os
import shutil
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_build_meta", os.path.join(ROOT, "rspnet", "_build_meta.py"))
build_meta = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_meta)


def find_cuda_home():
    """CUDA_HOME, else the toolkit of the nvcc on PATH, else /usr/local/cuda.
    (nvcc on PATH may be a wrapper script, so a candidate must hold the
    toolkit's headers to count.)"""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and \
                os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def want_cuda():
    import torch

    flag = os.environ.get("RSPNET_BUILD_CUDA", "auto").lower()
    if flag not in ("auto", "0", "1"):
        sys.exit(f"RSPNET_BUILD_CUDA must be auto, 0 or 1, not {flag!r}")
    if flag == "0":
        return False, "disabled by RSPNET_BUILD_CUDA=0"
    cuda_home = find_cuda_home()
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        reason = "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if reason:
        if flag == "1":
            sys.exit(f"RSPNET_BUILD_CUDA=1 but {reason}")
        return False, reason
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    return True, f"CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"


def pip_cuda_includes():
    """Headers that CUDA builds of torch expect (cusparse.h, ...) ship in the
    venv's nvidia/* wheels, not in a minimal toolkit."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "include")))
    return [d for d in dirs if os.path.isdir(d)]


def extensions():
    import torch

    with_cuda, why = want_cuda()  # sets CUDA_HOME, which cpp_extension reads at import
    from torch.utils import cpp_extension

    print(f"rspnet: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})", flush=True)
    sources = [os.path.join("csrc", "rspnet.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp"]
    define = []
    kwargs = {}
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define.append(("RSPNET_WITH_CUDA", None))
        kwargs["include_dirs"] = pip_cuda_includes()
        ext_cls = cpp_extension.CUDAExtension
        args = {"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]}
    else:
        ext_cls = cpp_extension.CppExtension
        args = {"cxx": cxx}
    ext = ext_cls("rspnet._C", sources, extra_compile_args=args, extra_link_args=["-fopenmp"],
                  define_macros=define, **kwargs)
    ext.rspnet_info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "cuda_reason": why,
        "source_hash": build_meta.source_hash(os.path.join(ROOT, "csrc")),
    }
    return [ext]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithInfo(BuildExtension):
        """Writes _C_build.json beside the built library: the runtime loader
        reads it *before* loading _C, to refuse a library built for another
        torch or from older sources instead of crashing on it."""

        def run(self):
            super().run()
            for ext in self.extensions:
                info = dict(getattr(ext, "rspnet_info", {}), built_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
                paths = {os.path.dirname(self.get_ext_fullpath(ext.name))}
                if self.inplace or getattr(self, "editable_mode", False):
                    paths.add(os.path.join(ROOT, "rspnet"))
                for d in paths:
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, build_meta.BUILD_INFO_FILE), "w") as f:
                        json.dump(info, f, indent=1)

    return BuildExtensionWithInfo.with_options(use_ninja=shutil.which("ninja") is not None or _has_ninja_module())


def _has_ninja_module():
    try:
        import ninja  # noqa: F401
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        return True
    except ImportError:
        return False


setup(
    packages=find_packages(include=["rspnet", "rspnet.*"]) + ["rspnet.kernels"],
    package_dir={"rspnet.kernels": "kernels"},
    package_data={"rspnet": [build_meta.BUILD_INFO_FILE, "presets/*/*.json", "presets/*/*.yaml"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
)
