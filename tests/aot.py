"""Ahead-of-time compilation of Triton kernels for Hopper (sm_90), no GPU needed.

Runs in a subprocess: under TRITON_INTERPRET=1 (set for the CPU test run) a
``@triton.jit`` function is interpreted and cannot be compiled.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
signature = dict(spec["signature"])
for name in spec["constexprs"]:
    signature[name] = "constexpr"
src = ASTSource(fn, signature, constexprs=spec["constexprs"])
k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
print(json.dumps({"name": k.name, "cubin_bytes": len(k.asm["cubin"]),
                  "ptx_target": [l.strip() for l in k.asm["ptx"].splitlines() if l.startswith(".target")]}))
"""


def compile_for_sm90(module: str, kernel: str, signature: dict, constexprs: dict) -> dict:
    """Compile ``module.kernel`` for sm_90; returns its name, cubin size and PTX target.

    ``signature`` maps every runtime argument to a Triton type ("*fp32",
    "i64", ...); ``constexprs`` maps each constexpr argument to its value."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    spec = json.dumps({"module": module, "kernel": kernel, "signature": signature, "constexprs": constexprs})
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, spec], capture_output=True, text=True, env=env,
                          timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"AOT compile of {module}.{kernel} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
