"""Triton kernels for ``channel_merge``: ``channel_shuffle(cat(xs, 1), groups)``.

Concatenated channel ``c`` lands in output channel ``(c % cpg) * groups +
c // cpg`` (``cpg = C // groups``). In NCHW every (n, c) plane is contiguous,
so each plane is copied straight to its shuffled place (forward) or back from
it (backward): every element is read and written once, with no concatenated
or shuffled intermediate (bytes moved = the ideal, 2 x the tensor). Works for
any dtype.

``channel_merge_kernel`` does the whole op in ONE launch for up to
``MAX_PARTS`` inputs: program (n * C + c, chunk) finds the input that owns
concatenated channel ``c`` from the channel boundaries ``b1 <= b2 <= b3``
(a uniform scalar branch per program) and copies BLOCK elements of that
plane. The host chunks longer input lists. ``channel_merge_copy_kernel`` is
the one-input form of the same copy (a plain channel shuffle). With
16-byte-aligned planes (``plane % 16 == 0`` and aligned pointers, the
runtime's ``tt.divisibility`` hints) each thread moves 128-bit vectors, all
loads of its tile issued before the stores. The host code is in
rspnet/ops/channel_merge.py.
"""
import triton
import triton.language as tl

BLOCK = 1024
MAX_PARTS = 4


@triton.jit
def _move(part, merged, offs, mask, TO_MERGED: tl.constexpr):
    if TO_MERGED:
        tl.store(merged + offs, tl.load(part + offs, mask=mask), mask=mask)
    else:
        tl.store(part + offs, tl.load(merged + offs, mask=mask), mask=mask)


@triton.jit
def _shuffled(c, C, groups):
    cpg = C // groups
    return (c % cpg) * groups + c // cpg


@triton.jit
def channel_merge_copy_kernel(part_ptr, merged_ptr, plane, part_channels, channel_offset, C, groups,
                              TO_MERGED: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n * part_channels + c, chunk) copies BLOCK elements of plane
    (n, c) of the part from/to plane (n, shuffled(channel_offset + c)) of the
    merged tensor."""
    pid = tl.program_id(0)
    n = pid // part_channels
    out_channel = _shuffled(channel_offset + pid % part_channels, C, groups)
    part = part_ptr + pid.to(tl.int64) * plane
    merged = merged_ptr + (n.to(tl.int64) * C + out_channel) * plane
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _move(part, merged, offs, offs < plane, TO_MERGED)


@triton.jit
def channel_merge_kernel(p0, p1, p2, p3, merged_ptr, plane, b1, b2, b3, CL, c_base, C, groups,
                         NUM_PARTS: tl.constexpr, TO_MERGED: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n * CL + l, chunk) copies BLOCK elements of local channel l
    of sample n from/to plane (n, shuffled(c_base + l)) of the merged tensor
    (``C`` channels). The launch covers concatenated channels
    [c_base, c_base + CL); its input k holds local channels [b_k, b_{k+1})
    (b_0 = 0; boundaries from b_NUM_PARTS on are CL)."""
    pid = tl.program_id(0)
    n = pid // CL
    c = pid % CL
    merged = merged_ptr + (n.to(tl.int64) * C + _shuffled(c_base + c, C, groups)) * plane
    # Unused boundaries are CL, so input k always has b_{k+1} - b_k channels.
    n64 = n.to(tl.int64)
    part = p0 + (n64 * b1 + c) * plane
    if NUM_PARTS > 1:
        if c >= b1:
            part = p1 + (n64 * (b2 - b1) + (c - b1)) * plane
    if NUM_PARTS > 2:
        if c >= b2:
            part = p2 + (n64 * (b3 - b2) + (c - b2)) * plane
    if NUM_PARTS > 3:
        if c >= b3:
            part = p3 + (n64 * (CL - b3) + (c - b3)) * plane
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _move(part, merged, offs, offs < plane, TO_MERGED)
