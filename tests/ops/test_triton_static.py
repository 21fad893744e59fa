"""Static checks of the Triton kernels as the runtime compiles them for sm_90
(H100/H200), no GPU needed: AOT-compiled with the runtime's alignment hints
(``tt.divisibility=16`` on 16-byte-aligned pointers and on sizes divisible
by 16, see tests/helpers/aot.py), every kernel must have no spills (cuobjdump: STACK 0,
LOCAL 0, no LDL/STL in the SASS), and the streaming kernels must move their
data in 128-bit vectors (``ld.global.v4`` in the PTX). The shapes are the
benchmark's: mixed_sum K=8 over 8x64x128x256, channel_merge of 2 x
(8x32x128x256), path_fusion of 256x512 (identity), 128x256, 64x128, 32x64
(bilinear x2, x4, x8) and 512x1024 (pool by 2) into 8x64x256x512."""
import pytest

from rspnet.ops import _backend
from tests.helpers.aot import compile_batch

pytestmark = pytest.mark.skipif(not _backend.TRITON_OK, reason="triton is not installed")

MS, CM, PF = "rspnet.kernels.mixed_sum", "rspnet.kernels.channel_merge", "rspnet.kernels.path_fusion"


def _ptrs(prefix, n, dtype="fp32"):
    return {f"{prefix}{i}": f"*{dtype}" for i in range(n)}


def _spec(module, kernel, signature, constexprs, unhinted=(), **extra):
    """A spec whose pointers and integer sizes all carry the alignment hint,
    except ``unhinted`` (values the runtime would not see as multiples of 16)."""
    hints = [a for a in signature if a not in unhinted]
    return {"module": module, "kernel": kernel, "signature": signature, "constexprs": constexprs,
            "hints": hints, "static": True, **extra}


def _pf_sizes(paths):
    return {f"{a}{i}": "i32" for i in paths for a in ("h", "w")}


# name -> (spec, must have ld.global.v4)
PF_MODES = {"MODE0": 0, "MODE1": 1, "MODE2": 1, "MODE3": 1}
PF_SCALES = {"SCALE0": 0, "SCALE1": 2, "SCALE2": 4, "SCALE3": 8}
KERNELS = {
    "mixed_sum_fwd": (_spec(MS, "mixed_sum_fwd_kernel",
                            {"y_ptr": "*fp32", "w_ptr": "*fp32", **_ptrs("x", 8), "n": "i64"},
                            {"K": 8, "ACCUMULATE": False, "BLOCK": 1024}), True),
    "mixed_sum_bwd": (_spec(MS, "mixed_sum_bwd_kernel",
                            {"g_ptr": "*fp32", "w_ptr": "*fp32", "partial_ptr": "*fp32", **_ptrs("x", 8),
                             **_ptrs("d", 8), "n": "i64", "num_tiles": "i64"},
                            {"K": 8, "INPUT_GRADS": True, "WEIGHT_GRAD": True, "BLOCK": 1024}), True),
    "channel_merge_fwd": (_spec(CM, "channel_merge_kernel",
                                {**_ptrs("p", 4), "merged_ptr": "*fp32", "plane": "i64", "b1": "i32", "b2": "i32",
                                 "b3": "i32", "CL": "i32", "c_base": "i32", "C": "i32", "groups": "i32"},
                                {"NUM_PARTS": 2, "TO_MERGED": True, "BLOCK": 1024},
                                unhinted=("c_base", "groups")), True),
    "channel_merge_bwd": (_spec(CM, "channel_merge_kernel",
                                {**_ptrs("p", 4), "merged_ptr": "*fp32", "plane": "i64", "b1": "i32", "b2": "i32",
                                 "b3": "i32", "CL": "i32", "c_base": "i32", "C": "i32", "groups": "i32"},
                                {"NUM_PARTS": 2, "TO_MERGED": False, "BLOCK": 1024},
                                unhinted=("c_base", "groups")), True),
    "channel_merge_copy": (_spec(CM, "channel_merge_copy_kernel",
                                 {"part_ptr": "*fp32", "merged_ptr": "*fp32", "plane": "i64",
                                  "part_channels": "i32", "channel_offset": "i32", "C": "i32", "groups": "i32"},
                                 {"TO_MERGED": True, "BLOCK": 1024}, unhinted=("channel_offset", "groups")), True),
    "path_fusion_fwd": (_spec(PF, "path_fusion_fwd_kernel",
                              {"y_ptr": "*fp32", "w_ptr": "*fp32", **_ptrs("x", 4), **_pf_sizes(range(4)),
                               "H": "i32", "W": "i32", "row_tiles": "i32"},
                              {"P": 4, **PF_MODES, **PF_SCALES, "ACCUMULATE": False, "BLOCK_H": 4,
                               "BLOCK_W": 128}), True),
    "path_fusion_fwd_pool": (_spec(PF, "path_fusion_fwd_kernel",
                                   {"y_ptr": "*fp32", "w_ptr": "*fp32", **_ptrs("x", 4), **_pf_sizes(range(4)),
                                    "H": "i32", "W": "i32", "row_tiles": "i32"},
                                   {"P": 2, "MODE0": 0, "MODE1": 2, "MODE2": 0, "MODE3": 0, "SCALE1": 2,
                                    "ACCUMULATE": True, "BLOCK_H": 4, "BLOCK_W": 128}), True),
    "path_fusion_bwd": (_spec(PF, "path_fusion_bwd_kernel",
                              {"g_ptr": "*fp32", "w_ptr": "*fp32", "partial_ptr": "*fp32", **_ptrs("x", 4),
                               **_ptrs("d", 4), **_pf_sizes(range(4)), "H": "i32", "W": "i32", "regions": "i32",
                               "num_programs": "i32"},
                              {"P": 4, **PF_MODES, **PF_SCALES, "KX0": 8, "KX1": 8, "KX2": 16, "KX3": 32,
                               "BJ0": 128, "BJ1": 128, "BJ2": 64, "BJ3": 32, "INPUT_GRADS": True,
                               "LOGIT_GRAD": True, "REGION": 16, "BLOCK_I": 8, "BLOCK_W": 128},
                              options={"num_warps": 8}), True),
    "path_fusion_bwd_pool": (_spec(PF, "path_fusion_bwd_kernel",
                                   {"g_ptr": "*fp32", "w_ptr": "*fp32", "partial_ptr": "*fp32", **_ptrs("x", 4),
                                    **_ptrs("d", 4), **_pf_sizes(range(4)), "H": "i32", "W": "i32",
                                    "regions": "i32", "num_programs": "i32"},
                                   {"P": 2, "MODE0": 0, "MODE1": 2, "MODE2": 0, "MODE3": 0, "SCALE1": 2,
                                    "KX0": 8, "KX1": 8, "KX2": 8, "KX3": 8, "BJ0": 128, "BJ1": 128, "BJ2": 128,
                                    "BJ3": 128, "INPUT_GRADS": True, "LOGIT_GRAD": True, "REGION": 16,
                                    "BLOCK_I": 8, "BLOCK_W": 128}, options={"num_warps": 8}), True),
    # The generic fallback (odd ratios) must not spill either.
    "path_fusion_bwd_generic": (_spec(PF, "path_fusion_bwd_kernel",
                                      {"g_ptr": "*fp32", "w_ptr": "*fp32", "partial_ptr": "*fp32",
                                       **_ptrs("x", 4), **_ptrs("d", 4), **_pf_sizes(range(4)), "H": "i32",
                                       "W": "i32", "regions": "i32", "num_programs": "i32"},
                                      {"P": 4, "MODE0": 1, "MODE1": 2, "MODE2": 1, "MODE3": 0, "KX0": 8,
                                       "KX1": 8, "KX2": 32, "KX3": 8, "BJ0": 128, "BJ1": 128, "BJ2": 32,
                                       "BJ3": 128, "INPUT_GRADS": True, "LOGIT_GRAD": True, "REGION": 16,
                                       "BLOCK_I": 8, "BLOCK_W": 128},
                                      unhinted=("h0", "w0", "h1", "w1", "h2", "w2", "H", "W"),
                                      options={"num_warps": None}), False),
}


@pytest.fixture(scope="module")
def figures():
    from rspnet.kernels.path_fusion import backward_warps

    # The generic backward is compiled with the warps the runtime launches it with.
    generic = KERNELS["path_fusion_bwd_generic"][0]
    generic["options"]["num_warps"] = backward_warps(generic["constexprs"])
    names = list(KERNELS)
    return dict(zip(names, compile_batch([KERNELS[n][0] for n in names])))


@pytest.mark.parametrize("name", list(KERNELS))
def test_no_spills(figures, name):
    f = figures[name]
    assert f["stack"] == 0 and f["local"] == 0 and f["ldl_stl"] == 0, f


@pytest.mark.parametrize("name", [n for n, (_, vec) in KERNELS.items() if vec])
def test_streams_use_128_bit_loads(figures, name):
    assert figures[name]["ld_global_v4"] > 0, figures[name]


@pytest.mark.parametrize("name", ["mixed_sum_fwd", "mixed_sum_bwd", "channel_merge_fwd", "channel_merge_bwd"])
def test_streams_load_the_tile_before_storing(figures, name):
    assert figures[name]["wide_ldg_after_first_stg"] == 0, figures[name]


@pytest.mark.parametrize("name", ["mixed_sum_fwd", "mixed_sum_bwd", "channel_merge_fwd"])
def test_streams_have_no_scalar_data_loads(figures, name):
    """With the hints, the only scalar loads left are the K weights."""
    k = 8 if name.startswith("mixed_sum") else 0
    assert figures[name]["ld_global_scalar"] <= k, figures[name]


def test_compiles_are_quick(figures):
    assert all(f["compile_s"] < 5 for f in figures.values()), {n: f["compile_s"] for n, f in figures.items()}


if __name__ == "__main__":   # the figures, for the record
    import json
    names = list(KERNELS)
    for n, f in zip(names, compile_batch([KERNELS[n][0] for n in names])):
        print(n, json.dumps({k: v for k, v in f.items() if k not in ("name", "ptx_target")}))
