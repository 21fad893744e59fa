"""The build did what it claims: with nvcc and a CUDA build of torch, the CUDA
kernels are in rspnet._C, compiled for sm_90 (H100/H200), without a GPU."""
import glob
import json
import os
import shutil
import struct

import pytest
import torch

from rspnet.ops import _backend

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rspnet")
FATBIN_MAGIC = 0xBA55ED50
KIND_NAMES = {1: "ptx", 2: "cubin"}


def fatbin_entries(path: str) -> list[tuple[str, int]]:
    """(kind, sm) of every entry in the ELF's .nv_fatbin section, read from the
    fatbinary headers (the container nvcc embeds; cuobjdump reads the same)."""
    with open(path, "rb") as f:
        data = f.read()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = sections[shstrndx][4]
    entries = []
    for sec in sections:
        start = names_off + sec[0]
        if data[start:data.index(b"\0", start)] != b".nv_fatbin":
            continue
        pos, end = sec[4], sec[4] + sec[5]
        while pos + 16 <= end:
            magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
            if magic != FATBIN_MAGIC:
                break
            p = pos + header_size
            while p < pos + header_size + fat_size:
                kind, _, entry_header, payload = struct.unpack_from("<HHII", data, p)
                sm = struct.unpack_from("<I", data, p + 28)[0]
                entries.append((KIND_NAMES.get(kind, str(kind)), sm))
                p += entry_header + payload
            pos += header_size + fat_size
            pos = (pos + 7) & ~7
    return entries


def _record():
    path = os.path.join(PKG, "_C_build.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


CUDA_EXPECTED = (shutil.which("nvcc") is not None and torch.version.cuda is not None
                 and os.environ.get("RSPNET_BUILD_CUDA", "auto") != "0")


def test_extension_loaded():
    assert _backend._EXT["loaded"], _backend._EXT["problem"]
    assert _backend.has_kernel("mixed_sum", "CPU")


@pytest.mark.skipif(not CUDA_EXPECTED, reason="no nvcc or a CPU-only torch here: CUDA kernels are not expected")
def test_cuda_kernels_built_for_sm90():
    record = _record()
    assert record is not None and record["cuda"], f"CUDA kernels were not built: {record and record['cuda_reason']}"
    assert _backend.has_kernel("mixed_sum", "CUDA")
    lib = glob.glob(os.path.join(PKG, "_C.*.so"))[0]
    entries = fatbin_entries(lib)
    assert ("cubin", 90) in entries, entries
