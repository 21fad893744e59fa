"""Static checks of the sm_90 CUDA kernels in the built rspnet._C (no GPU needed).

Every kernel has a 0-byte stack frame and no local memory, so nothing spills
and no argument array is copied to a stack; the streaming kernels' 16-byte
instantiations really move 16 bytes per access."""
import pytest

from rspnet.ops import _backend
from tests.helpers.cuda_static import cuobjdump, resources, sass_counts, short_name

pytestmark = [
    pytest.mark.skipif(not _backend.has_kernel("mixed_sum", "CUDA"), reason="rspnet._C has no CUDA kernels"),
    pytest.mark.skipif(cuobjdump() is None, reason="no cuobjdump (it ships in the triton wheel)"),
]


@pytest.fixture(scope="module")
def kernels():
    res = {n: r for n, r in resources().items() if "rspnet" in n}
    assert res, "no rspnet kernels found in rspnet._C"
    return res


@pytest.fixture(scope="module")
def sass():
    return sass_counts()


def test_every_kernel_has_no_stack_frame_and_no_local_memory(kernels):
    bad = {short_name(n): r for n, r in kernels.items() if r["STACK"] or r["LOCAL"]}
    assert not bad, f"kernels with a stack frame or local memory: {bad}"


def test_no_spills_in_the_sass(kernels, sass):
    bad = {short_name(n): sass[n]["LDL"] + sass[n]["STL"] for n in kernels if sass[n]["LDL"] + sass[n]["STL"]}
    assert not bad, f"local loads/stores (spills) in: {bad}"


def _wide(counts, kind):
    return sum(v for k, v in counts.items() if k.startswith(kind) and ".128" in k)


@pytest.mark.parametrize("kernel, instantiation", [
    ("mixed_sum_fwd_kernel", "IfLi4E"), ("mixed_sum_bwd_kernel", "IfLi4E"),
    ("mixed_sum_fwd_kernel", "BFloat16ELi8E"), ("mixed_sum_bwd_kernel", "BFloat16ELi8E"),
    ("channel_merge_copy_kernel", "I5uint4E"),
    ("path_fusion_bwd_kernel", "IfLb1E"), ("path_fusion_fwd_kernel", "IfLb1E"),
])
def test_streaming_kernels_move_16_bytes_per_access(kernels, sass, kernel, instantiation):
    names = [n for n in kernels if kernel in n and instantiation in n]
    assert names, f"no {kernel} instantiation matching {instantiation}"
    for n in names:
        assert _wide(sass[n], "LDG") > 0 and _wide(sass[n], "STG") > 0, (short_name(n), dict(sass[n]))
