"""Ahead-of-time compilation of Triton kernels for Hopper (sm_90), no GPU needed,
and the static figures of the result.

Runs in a subprocess: under TRITON_INTERPRET=1 (set for the CPU test run) a
``@triton.jit`` function is interpreted and cannot be compiled. One subprocess
compiles a whole batch of kernels (``compile_batch``), so the import of triton
and torch is paid once per batch.

Alignment hints: at launch Triton marks every tensor argument whose address
is a multiple of 16 bytes, and every integer argument divisible by 16, with
``tt.divisibility = 16``; that is what lets it emit 128-bit loads. A spec's
``hints`` names the arguments that get the same attribute here (through
``ASTSource(..., attrs={(index,): [["tt.divisibility", 16]]})``), so the
static check looks at the specialisation the runtime really compiles.
Parameters a spec leaves out take their declared defaults as constexprs.

For every kernel the report gives, from the cubin (``cuobjdump`` shipped in
the triton wheel): registers, stack, local and shared memory, and the count
of local-memory instructions (``LDL``/``STL``: spills) in the SASS; from the
PTX: vector (``.v4``, ``.v2``) and scalar global loads and stores, and
``bar.sync`` barriers, and the number of 64/128-bit loads SASS issues after
the first global store.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

_SCRIPT = r"""
import importlib, inspect, json, os, re, subprocess, sys, tempfile, time
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def ptx_counts(ptx):
    counts = {}
    for op in ("ld", "st"):
        lines = [l for l in ptx.splitlines() if re.match(rf"\s*(@%p\d+\s+)?{op}\.global", l.strip())]
        counts[f"{op}_global_v4"] = sum(".v4." in l for l in lines)
        counts[f"{op}_global_v2"] = sum(".v2." in l for l in lines)
        counts[f"{op}_global_scalar"] = sum(".v4." not in l and ".v2." not in l for l in lines)
    counts["bar_sync"] = len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx))
    return counts


def resources(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path],
                              capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    out = {k.lower(): int(v) for k, v in fields.items()}
    out["ldl_stl"] = len(re.findall(r"\b(LDL|STL)\b", sass))
    out["sass_instructions"] = len(re.findall(r"/\*[0-9a-f]{4}\*/", sass))
    # Wide loads that SASS issues after the kernel's first global store: a
    # streaming kernel that loads its whole tile first has none (loops aside).
    ops = re.findall(r"\b(LDG\.E\.128|LDG\.E\.64|STG)\S*", sass)
    first = ops.index("STG") if "STG" in ops else len(ops)
    out["wide_ldg_after_first_stg"] = sum(op != "STG" for op in ops[first:])
    return out


results = []
for spec in json.loads(sys.stdin.read()):
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    signature = dict(spec["signature"])
    constexprs = dict(spec["constexprs"])
    params = list(inspect.signature(fn.fn).parameters.values())
    names = [p.name for p in params]
    for p in params:
        if p.name not in signature and p.name not in constexprs and p.default is not inspect.Parameter.empty:
            constexprs[p.name] = p.default
    for name in constexprs:
        signature[name] = "constexpr"
    constexprs = {(names.index(a),): v for a, v in constexprs.items()}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in spec.get("hints", [])}
    start = time.perf_counter()
    k = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=spec.get("options") or None)
    info = {"name": k.name, "cubin_bytes": len(k.asm["cubin"]),
            "ptx_target": [l.strip() for l in k.asm["ptx"].splitlines() if l.startswith(".target")],
            "compile_s": round(time.perf_counter() - start, 3),
            "triton_shared": k.metadata.shared, "num_warps": k.metadata.num_warps}
    if spec.get("static", False):
        info.update(ptx_counts(k.asm["ptx"]))
        info.update(resources(k.asm["cubin"]))
    results.append(info)
print(json.dumps(results))
"""


def compile_batch(specs: list[dict], timeout: float = 600) -> list[dict]:
    """Compile every spec for sm_90 in one subprocess; one result dict per spec.

    A spec is a dict with ``module``, ``kernel``, ``signature`` (every runtime
    argument to a Triton type: "*fp32", "i32", ...), ``constexprs`` (name to
    value), optionally ``hints`` (argument names given ``tt.divisibility=16``),
    ``options`` (e.g. ``{"num_warps": 8}``) and ``static`` (also report the
    figures of the module docstring: keys ``reg``, ``stack``, ``local``,
    ``shared``, ``ldl_stl``, ``ld_global_v4``, ``ld_global_scalar``, ...)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The checkout these tests belong to comes first (not an installed copy).
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(specs), capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        names = ", ".join(f"{s['module']}.{s['kernel']}" for s in specs)
        raise AssertionError(f"AOT compile of {names} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_for_sm90(module: str, kernel: str, signature: dict, constexprs: dict, hints: list | None = None,
                     static: bool = False, options: dict | None = None) -> dict:
    """Compile ``module.kernel`` for sm_90; returns its name, cubin size and PTX
    target (and the static figures when ``static``). See ``compile_batch``."""
    return compile_batch([{"module": module, "kernel": kernel, "signature": signature, "constexprs": constexprs,
                           "hints": hints or [], "static": static, "options": options}])[0]
