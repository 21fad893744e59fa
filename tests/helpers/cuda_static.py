"""Static facts about the CUDA kernels in the built rspnet._C, read with the
``cuobjdump`` that ships in the triton wheel (no GPU needed).

``resources()`` -> per sm_90 kernel: registers, stack frame, shared and local
memory (``--dump-resource-usage``); ``sass_counts()`` -> per kernel, the
count of each SASS opcode (``-sass``): spills show as LDL/STL, 16-byte global
accesses as LDG.E.128 / STG.E.128.

    python -m tests.helpers.cuda_static     # the table, for the kernels' notes
"""
from __future__ import annotations

import collections
import glob
import os
import re
import subprocess

from tests.helpers import ROOT

PKG = os.path.join(ROOT, "rspnet")


def cuobjdump() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def library() -> str:
    return glob.glob(os.path.join(PKG, "_C.*.so"))[0]


def short_name(mangled: str) -> str:
    """``rspnet::{anon}::mixed_sum_fwd_kernel<float, 4>`` -> "mixed_sum_fwd_kernel<f,4>" (roughly)."""
    m = re.search(r"(\w+_kernel)I(.*)E(?:E|v)", mangled)
    if not m:
        return mangled
    args = m.group(2)
    args = args.replace("N3c108BFloat16E", "bf16").replace("N3c104HalfE", "f16").replace("13__nv_bfloat16", "bf16")
    args = re.sub(r"Li(\d+)E", r",\1", args).replace("Lb1E", ",vec").replace("Lb0E", ",scalar")
    args = re.sub(r"^(\d+)(uint\d|\w)", r"\2", args)
    return f"{m.group(1)}<{args.split('EEv')[0][:24]}>"


def resources(lib: str | None = None) -> dict[str, dict[str, int]]:
    out = subprocess.run([cuobjdump(), "--dump-resource-usage", lib or library()], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    table, name = {}, None
    for line in out.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            table[name] = dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, m.groups())))
            name = None
    return table


def sass_counts(lib: str | None = None) -> dict[str, collections.Counter]:
    out = subprocess.run([cuobjdump(), "-sass", lib or library()], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    counts, name = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            counts[name] = collections.Counter()
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and name:
            counts[name][m.group(1)] += 1
    return counts


def main() -> None:
    res, sass = resources(), sass_counts()
    print(f"{'kernel':56s} {'REG':>4s} {'STACK':>5s} {'SHARED':>6s} {'LDL+STL':>7s} {'LDG.128':>7s} {'STG.128':>7s}")
    for name in sorted(res, key=short_name):
        r, c = res[name], sass.get(name, collections.Counter())
        ld128 = sum(v for k, v in c.items() if k.startswith("LDG") and ".128" in k)
        st128 = sum(v for k, v in c.items() if k.startswith("STG") and ".128" in k)
        print(f"{short_name(name):56s} {r['REG']:4d} {r['STACK']:5d} {r['SHARED']:6d} "
              f"{c['LDL'] + c['STL']:7d} {ld128:7d} {st128:7d}")


if __name__ == "__main__":
    main()
