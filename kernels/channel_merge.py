"""Triton kernel for ``channel_merge``: ``channel_shuffle(cat(xs, 1), groups)``.

Concatenated channel ``c`` lands in output channel ``(c % cpg) * groups +
c // cpg`` (``cpg = C // groups``). In NCHW every (n, c) plane is contiguous,
so one launch per input copies each of its planes straight to its shuffled
place (forward) or back from it (backward): every element is read and written
once, with no concatenated or shuffled intermediate. Works for any dtype.
The host code (allocation, launches) is in rspnet/ops/channel_merge.py.
"""
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def channel_merge_copy_kernel(part_ptr, merged_ptr, plane, part_channels, channel_offset, C, groups,
                              TO_MERGED: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n * part_channels + c, chunk) copies BLOCK elements of plane
    (n, c) of the part from/to plane (n, shuffled(channel_offset + c)) of the
    merged tensor."""
    pid = tl.program_id(0)
    n = pid // part_channels
    c = channel_offset + pid % part_channels
    cpg = C // groups
    out_channel = (c % cpg) * groups + c // cpg
    part = part_ptr + pid.to(tl.int64) * plane
    merged = merged_ptr + (n.to(tl.int64) * C + out_channel) * plane
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < plane
    if TO_MERGED:
        tl.store(merged + offs, tl.load(part + offs, mask=mask), mask=mask)
    else:
        tl.store(part + offs, tl.load(merged + offs, mask=mask), mask=mask)
