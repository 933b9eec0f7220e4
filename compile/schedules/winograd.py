"""The schedule of the Winograd NCHW[x]c conv (`compile/winograd.py`) and its fused epilogue.

The kernel's blocks: `pad_nchwc`, the input transform's parts `winograd_input_v<e>` (one per transformed
point e) stacked into V by `winograd_stack`, `winograd_gemm` (M = the alpha^2 batched GEMMs over the input
channels), the output transform's parts `winograd_tile_v<i*m+j>` interleaved into the conv output by
`winograd_output`, then the fused epilogue (bias, activation, residual add). One parallel loop over groups
(`_groups`: tile rows, and output-channel chunks where the weights are large); per group:

1. the zero-padded input rows (a copy), then V for the group's tiles and all input channels: the alpha^2 parts
   of a tile and channel block in one basic block (merged loop nests), so LLVM loads the input patch and
   computes the shared row sums of B^T d B once;
2. the GEMMs, register tile `nf` output-channel blocks x `nty x ntx` tiles (within `cfg.accumulators`; per
   input channel `nt` broadcasts of V, `nf` loads of U, `nf * nt` FMAs), for each transformed point in
   turn, so its slice of the weights stays in cache over the group's tiles; the tile copied to M;
3. per tile and output-channel block: the m x m outputs of A^T M A (the parts, again one basic block), the
   epilogue on them in registers, one store of each output vector.

V and M are per-group buffers, bounded by the group.
"""

from __future__ import annotations

from .config import TILE_SCOPE, CpuConfig
from .rules import _divisors_le, _int, _pointwise_over, _root, _is_spatial_block

INPUT, STACK, GEMM, TILE, OUTPUT = "winograd_input", "winograd_stack", "winograd_gemm", "winograd_tile", "winograd_output"


def _loads_of(sch, buf, consumers) -> int:
    """How many loads of `buf` the bodies of `consumers` make."""
    import tvm
    import tvm_ffi

    count = [0]

    def visit(node):
        if node.source.same_as(buf):
            count[0] += 1

    for blk in consumers:
        tvm_ffi.structural_walk(sch.get(blk).body, (tvm.ir.TensorLoad, visit), order="post")
    return count[0]


# Transformed weights above this are streamed once per image (one group of rows, split by output channels
# between the threads) rather than once per tile row. Measured (1 thread, Zen 5, 32 MB L3 shared with another
# busy process): 14x14x256 at F(4x4), 9.4 MB, ran 0.53 ms in groups of a tile row (4 streams, from L3) and
# 0.59 ms in one group; 7x7x512 at F(2x2), 17 MB, 2.2 ms in groups of a row (partly from memory) and 1.4 ms
# in one group. Groups of one tile row keep V and M in L1/L2: 56x56x64 and 28x28x128 at F(4x4) were 10-25%
# slower in groups of 2 or all rows. On ARM boards (no or a small L3: unmeasured) above half the L2.
STREAM_ONCE_BYTES = {"x86_64": 12 << 20}
# ... but a group's V and M (a workspace per group and thread, alpha^2 / m^2 times its share of the output)
# stay within this: a large image with such weights takes several groups of rows.
MAX_GROUP_BYTES = 4 << 20


def _groups(th: int, tw: int, alpha: int, cin: int, cout: int, ocb: int, batch: int,
            cfg: CpuConfig) -> tuple[int, int]:
    """(tile rows per group, output-channel chunks) of the kernel's parallel loop (see STREAM_ONCE_BYTES); at
    least a group per thread where the image has enough rows."""
    weights = alpha * alpha * cin * cout * 4
    if weights <= STREAM_ONCE_BYTES.get(cfg.arch, cfg.l2_bytes // 2):
        return 1, 1
    chunks = max(d for d in _divisors_le(ocb, cfg.threads) if d <= max(1, cfg.threads // batch))
    per_row = alpha * alpha * tw * (cin + cout // chunks) * 4
    rows = max(r for r in _divisors_le(th, th) if r == 1 or r * per_row <= MAX_GROUP_BYTES)
    return rows, chunks


def _per_tile(sch, blk, m: int):
    """A stage over the output ([n, ob, y, x, oi], below the group loop) in tiles: the m x m pixels of a
    tile unrolled (which folds the selects on y % m, x % m), the lanes vectorised. Returns the loop over
    output-channel blocks inside the tile loops, where a tile's m x m values are computed."""
    yo, yy, yx, yoi = sch.get_loops(blk)[-4:]
    yyt, yyi = sch.split(yy, factors=[None, m])
    yxt, yxi = sch.split(yx, factors=[None, m])
    sch.reorder(yyt, yxt, yo, yyi, yxi, yoi)
    sch.unroll(yyi)
    sch.unroll(yxi)
    sch.vectorize(yoi)
    return yo


def _merge_nests(sch, blocks) -> None:
    """The loop nests of `blocks` (below a common loop, equal extents) merged level by level into one, its
    innermost loop vectorised: their bodies, the parts of one transform, share one basic block, so LLVM
    loads their common inputs and computes their common row sums once."""
    nests = [sch.get_loops(b) for b in blocks]
    depth = len(nests[0])
    if any(len(n) != depth for n in nests):
        raise ValueError("nests of different depth")
    shared = 0  # the loops all of them are already under
    while shared < depth and all(sch.get(n[shared]).same_as(sch.get(nests[0][shared])) for n in nests):
        shared += 1
    merged = None
    for level in range(shared, depth):
        merged = sch.merge(*[sch.get_loops(b)[level] for b in blocks])
    sch.vectorize(merged)


def conv2d_winograd(func, cfg: CpuConfig):
    """Schedule a fused Winograd conv kernel; (schedule, "conv2d-winograd") or None."""
    from tvm import s_tir

    from .nchwc import _block_names

    names = _block_names(func)
    if not all(n in names for n in (STACK, GEMM, OUTPUT)):
        return None
    sch = s_tir.Schedule(func)
    root = _root(sch)
    blocks = list(sch.get_child_blocks(root))
    order = [sch.get(b).name_hint for b in blocks]
    if not all(n in order for n in (STACK, GEMM, OUTPUT)):
        return None
    # the transforms' parts (TE makes a block per output of a multi-output compute): input_v0.., tile_v0..
    parts = [b for b, n in zip(blocks, order) if n.startswith(INPUT + "_v")]
    tiles = [b for b, n in zip(blocks, order) if n.startswith(TILE + "_v")]
    stack, gemm, yout = (blocks[order.index(n)] for n in (STACK, GEMM, OUTPUT))
    if not parts or not tiles:
        return None
    prologue = blocks[:blocks.index(parts[0])]
    epilogue = blocks[order.index(OUTPUT) + 1:]
    if not all(_is_spatial_block(sch.get(b)) for b in prologue + epilogue):
        return None
    y_buf = sch.get(yout).writes[0].source
    if epilogue and not _pointwise_over(sch, epilogue, y_buf):
        return None  # the epilogue reshapes the output: it cannot run per tile
    e_n, ocb_n, n_n, th, tw, lanes = (_int(iv.dom.extent) for iv in sch.get(gemm).iter_vars[:6])
    icb_n, ib = (_int(iv.dom.extent) for iv in sch.get(gemm).iter_vars[6:])
    alpha = {16: 4, 36: 6}.get(e_n)
    if alpha is None or None in (ocb_n, n_n, th, tw, lanes, icb_n, ib):
        return None
    m = alpha - 2
    if len(parts) != e_n or len(tiles) != m * m:
        return None

    # The interleave of the output tile and the epilogue into one expression per output element, stored once;
    # a value read more than once (x * sigmoid(x)) stays a stage of its own, computed per group
    stages = [yout] + list(epilogue)
    final = stages[-1]
    kept = []
    for blk in stages[:-1]:
        buf = sch.get(blk).writes[0].source
        if _loads_of(sch, buf, sch.get_consumers(blk)) > 1:
            kept.append(blk)
            continue
        sch.compute_inline(blk)

    # register tile: nf output-channel blocks x (nty x ntx) tiles of the group; several tile rows only when
    # the tile is a whole row (a tile across a row's end would not be a box of M, which the copy-out needs)
    rows, chunks = _groups(th, tw, alpha, icb_n * ib, ocb_n * lanes, ocb_n, n_n, cfg)
    budget = cfg.accumulators
    if cfg.arch != "x86_64":
        budget = min(budget, 16)  # as nchwc.py: fmla-by-lane needs registers beside the tile on aarch64
    best = None
    for nf in _divisors_le(ocb_n // chunks, 4):
        cap = min(8, min(budget, cfg.vector_regs - nf - 3) // nf)
        for ntx in _divisors_le(tw, cap):
            for nty in _divisors_le(rows, cap // ntx) if ntx == tw else [1]:
                acc = nf * ntx * nty
                score = acc / (nf + ntx * nty) + 0.001 * acc
                if best is None or score > best[0]:
                    best = (score, nf, nty, ntx)
    _, nf, nty, ntx = best

    # The output side anchors the loop nest (compute_at from there: TVM's reverse_compute_at cannot solve
    # the output's reads of M at constant transformed indices). Groups of `rows` tile rows, parallel.
    fb, fo_, fy, fx, foi = sch.get_loops(final)
    fyg, fyr = sch.split(fy, factors=[None, rows * m])
    foc, fo_ = sch.split(fo_, factors=[chunks, None])
    sch.reorder(foc, fb, fyg, fo_, fyr, fx, foi)
    group = sch.fuse(foc, fb, fyg)
    # per tile and output-channel block: the output transform, then the epilogue on the m x m pixels in
    # registers (the tile's values are a few vectors on the stack, which LLVM keeps in registers)
    tile_loop = {sch.get(final).name_hint: _per_tile(sch, final, m)}
    for blk in reversed(kept):
        sch.compute_at(blk, group, preserve_unit_loops=True)
        tile_loop[sch.get(blk).name_hint] = _per_tile(sch, blk, m)
    consumers = {sch.get(c).name_hint for t in tiles for c in sch.get_consumers(t)}
    if len(consumers) != 1 or next(iter(consumers)) not in tile_loop:
        return None
    at = tile_loop[next(iter(consumers))]
    for t in tiles:
        sch.compute_at(t, at, preserve_unit_loops=False)  # the lanes loop only: a tile is one point
    _merge_nests(sch, tiles)

    # the GEMMs of the group
    sch.compute_at(gemm, group, preserve_unit_loops=True)
    e_l, o_l, b_l, ty_l, tx_l, oi_l, icb_l, ici_l = sch.get_loops(gemm)[1:]
    tyo, tyi = sch.split(ty_l, factors=[None, nty])
    txo, txi = sch.split(tx_l, factors=[None, ntx])
    fo, fi = sch.split(o_l, factors=[None, nf])
    sch.reorder(e_l, fo, b_l, tyo, txo, icb_l, ici_l, fi, tyi, txi, oi_l)
    copy = sch.cache_write(gemm, 0, TILE_SCOPE)  # the accumulator tile (registers), copied to M per tile
    sch.reverse_compute_at(copy, txo, preserve_unit_loops=True)
    depth = len(sch.get_loops(gemm)) - 6  # the loops down to `txo` (below it: icb, ici, fi, tyi, txi, oi)
    cloops = sch.get_loops(copy)[depth:]
    for lp in cloops[:-1]:
        sch.unroll(lp)
    sch.vectorize(cloops[-1])
    for lp in (fi, tyi, txi):
        sch.unroll(lp)
    sch.vectorize(oi_l)

    # input transform per group: all alpha^2 points of a tile and channel block in one iteration
    sch.compute_at(stack, group, preserve_unit_loops=True)
    for p in parts:
        sch.compute_at(p, group, preserve_unit_loops=True)
        pc, pb, pty, ptx, pi = sch.get_loops(p)[-5:]
        sch.reorder(pb, pty, ptx, pc, pi)
    _merge_nests(sch, parts)
    # the zero padding of the group's input rows, as a copy: read in place (inlined) each of the alpha^2 parts
    # would test its loads, and inlining it into them took 0.4 s per kernel (the runtime was the same)
    for blk in reversed(prologue):
        sch.compute_at(blk, group, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(blk)[-1])
    # the parts stacked into V right where they are computed (per tile and channel block: the parts are a
    # vector each, kept in registers; the select over the unrolled transformed index folds)
    sch.reverse_compute_at(stack, sch.get_loops(parts[0])[-2], preserve_unit_loops=True)
    se, sc, sb, sty, stx, si = sch.get_loops(stack)[-6:]
    sch.unroll(se)
    sch.vectorize(si)
    if cfg.threads > 1 and (_int(sch.get(group).extent) or 1) > 1:
        sch.parallel(group)
    # the tile's zero-init (after `parallel`, which wants the reduction block whole), unrolled under `txo`
    init = sch.decompose_reduction(gemm, icb_l)
    iloops = sch.get_loops(init)[depth:]
    for lp in iloops[:-1]:
        sch.unroll(lp)
    sch.vectorize(iloops[-1])
    return sch, "conv2d-winograd"
