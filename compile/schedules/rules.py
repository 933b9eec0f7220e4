"""Rule-based default TIR schedules for CPU kernels (no tuning).

Each rule looks at a fused PrimFunc's blocks (iteration kinds, buffer access patterns) and either
returns a scheduled `s_tir.Schedule` plus the rule's name, or None when it does not apply.

- `tiled_reduction`: one multiply-accumulate (or max/sum window) reduction block — conv2d of every
  kind (regular, strided, 1x1, depthwise), dense/matmul/batch-matmul, pooling — with elementwise
  prologues (padding, copies) and epilogues (bias, clip, residual add). Register tile
  `mr x (rows x chunks x lanes)` with the reduction loops outside it, the innermost output axis
  vectorised at the target's width, outer tiles fused into one parallel loop, the accumulator
  tile kept in a local buffer (registers) and the fused epilogue computed per tile.
- `row_reduction`: softmax / layer norm rows, each row's sums and maxima as vector partial results
  (rfactor), reduced across lanes once per row.
- `reduction`: TVM dlight's CPU reduction rule, for the row reductions `row_reduction` declines.
- `elementwise`: injective kernels (transposes, reshapes, GELU, adds, padding): chains inlined,
  outer loops parallel, innermost loop vectorised.

What a rule accepts, checked before it rewrites anything (a kernel outside it is declined, never
scheduled on a guess; TVM's schedule primitives keep the rest semantics-preserving):

- `conv2d_packed`: 7 loops `n, f, y, x | rc, ry, rx` with the output written at `[n, f, y, x]`
  (NCHW), a weight that is a function parameter read at exactly `[f, rc, ry, rx]`, `f` a multiple
  of the vector width (16 -> 8 lanes on AVX-512 when needed), and every epilogue pointwise.
- `tiled_reduction`: exactly one reduction block (all others spatial), constant loop extents equal
  to its iterator domains, output indices plain spatial iterators (innermost one vectorised, any
  layout: NCHW, NHWC, matmul), operand reads of extent 1. Epilogues are fused per register tile
  only when pointwise over the main output (`_pointwise_over`); otherwise (channel-axis padding,
  transposes, broadcasts) they run after the whole main block. Padding prologues (`if_then_else`)
  stay separate stages; stride-2 de-interleaving only on a 4-d padded buffer of even width whose
  last index is `2 * v + r`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TILE_SCOPE, CpuConfig
from .knobs import pick


def _ir():
    import tvm_ffi
    from tvm import s_tir, tirx

    return tvm_ffi, s_tir, tirx


def _vars_in(expr) -> set:
    tvm_ffi, _, tirx = _ir()
    found: set = set()
    tvm_ffi.structural_walk(expr, (tirx.Var, found.add), order="post")
    return found


def _has_if_then_else(stmt) -> bool:
    tvm_ffi, _, tirx = _ir()
    hit = []

    def visit(node):
        op = getattr(node, "op", None)
        if op is not None and str(getattr(op, "name", "")).endswith("if_then_else"):
            hit.append(node)

    import tvm

    tvm_ffi.structural_walk(stmt, (tvm.ir.Call, visit), order="post")
    return bool(hit)


def _int(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _divisors_le(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _largest_divisor_le(n: int, limit: int) -> int:
    return max(_divisors_le(n, max(1, limit)))


def _root(sch):
    _, s_tir, tirx = _ir()
    from tvm.s_tir.dlight.analysis import get_root_block

    return get_root_block(sch)


def _is_spatial_block(stmt) -> bool:
    _, _, tirx = _ir()
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars)


def _is_reduction_block(stmt) -> bool:
    _, _, tirx = _ir()
    kinds = {iv.iter_type for iv in stmt.iter_vars}
    return tirx.IterVar.CommReduce in kinds and kinds <= {tirx.IterVar.DataPar, tirx.IterVar.CommReduce}


def vectorize_inner(sch, loop, extent: int, lanes: int) -> None:
    """Vectorise `loop` (of constant `extent`) in pieces of at most `lanes` that divide it."""
    if extent < 2 or lanes < 2:
        return
    if extent <= lanes:
        sch.vectorize(loop)
        return
    width = _largest_divisor_le(extent, lanes)
    if width < 2:
        return
    _, inner = sch.split(loop, factors=[None, width])
    sch.vectorize(inner)


def schedule_spatial_block(sch, block, cfg: CpuConfig, *, parallel: bool = True, min_parallel: int = 2048) -> None:
    """Parallel outer loops and a vectorised innermost loop for one injective block."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [_int(sch.get(lp).extent) for lp in loops]
    if any(e is None for e in extents):
        return
    stmt = sch.get(block)
    bits = stmt.writes[0].source.dtype.bits if stmt.writes else 32
    lanes = cfg.lanes(bits)
    total = 1
    for e in extents:
        total *= e
    inner = loops[-1]
    inner_ext = extents[-1]
    outer = loops[:-1]
    if parallel and cfg.threads > 1 and total >= min_parallel and outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)
    elif parallel and cfg.threads > 1 and total >= min_parallel and inner_ext >= 2 * lanes:
        o, inner = sch.split(inner, factors=[None, _largest_divisor_le(inner_ext, lanes)])
        sch.parallel(o)
        inner_ext = _int(sch.get(inner).extent)
    vectorize_inner(sch, inner, inner_ext, lanes)


# --------------------------------------------------------------------------------------------------
# tiled reduction: conv2d / matmul / pooling


@dataclass
class _MainInfo:
    kind: str           # "conv2d", "conv2d-depthwise", "matmul", "pool"
    v: int              # iter index vectorised (innermost output axis)
    m: int | None       # iter index register-blocked with reuse of the streamed operand
    row: int | None     # iter index of extra row blocking (next-to-innermost output axis)


def _analyse_main(stmt) -> _MainInfo | None:
    _, _, tirx = _ir()
    iters = list(stmt.iter_vars)
    if len(stmt.writes) != 1:
        return None
    out = stmt.writes[0]
    if any(_int(r.extent) != 1 for r in out.region):
        return None
    out_idx = [r.min for r in out.region]
    var_pos = {iv.var: i for i, iv in enumerate(iters)}
    spatial = {i for i, iv in enumerate(iters) if iv.iter_type == tirx.IterVar.DataPar}
    reduce_ = [i for i, iv in enumerate(iters) if iv.iter_type == tirx.IterVar.CommReduce]
    # Every output index must be a plain spatial iterator.
    plain = []
    for e in out_idx:
        if not isinstance(e, tirx.Var) or e not in var_pos or var_pos[e] not in spatial:
            if _int(e) is None:
                return None
            plain.append(None)
            continue
        plain.append(var_pos[e])
    if plain[-1] is None:
        return None
    v = plain[-1]
    reads = [r for r in stmt.reads if not r.source.same_as(out.source)]
    if not reads or any(any(_int(x.extent) != 1 for x in r.region) for r in reads):
        return None
    v_var = iters[v].var
    streamed = [r for r in reads if v_var in _vars_in(r.region[-1].min)]
    if not streamed:
        return None
    streamed_vars: set = set()
    for r in streamed:
        for x in r.region:
            streamed_vars |= _vars_in(x.min)
    candidates = [i for i in plain[:-1] if i is not None and iters[i].var not in streamed_vars
                  and (_int(iters[i].dom.extent) or 0) > 1]
    m = max(candidates, key=lambda i: _int(iters[i].dom.extent)) if candidates else None
    row = None
    if len(plain) >= 2 and plain[-2] is not None and plain[-2] != m and (_int(iters[plain[-2]].dom.extent) or 0) > 1:
        row = plain[-2]
    # Window access: some read index combines a spatial and a reduction iterator (y*s + ry).
    red_vars = {iters[i].var for i in reduce_}
    window = False
    for r in reads:
        for x in r.region:
            used = _vars_in(x.min)
            if used & red_vars and used & {iters[i].var for i in spatial}:
                window = True
    if len(reads) >= 2:
        if window:
            kind = "conv2d" if m is not None else "conv2d-depthwise"
        else:
            kind = "matmul"
    else:
        kind = "pool" if window else "reduce"
    return _MainInfo(kind, v, m, row)


def _choose_tile(cfg: CpuConfig, lanes: int, ext_v: int, ext_m: int, ext_row: int) -> tuple[int, int, int, int]:
    """(mr, rows, chunks, width): register tile of mr x rows x chunks vectors of `width` lanes."""
    width = ext_v if ext_v <= lanes else _largest_divisor_le(ext_v, lanes)
    nvec = ext_v // width
    budget = cfg.accumulators
    mr_max = 8 if cfg.vector_regs >= 32 else 6
    best = None
    for mr in _divisors_le(ext_m, mr_max):
        for chunks in _divisors_le(nvec, budget):
            rows_opts = _divisors_le(ext_row, budget) if chunks == nvec else [1]
            for rows in rows_opts:
                vecs = rows * chunks
                if mr * vecs > budget or vecs > 8:
                    continue
                # FMAs per (load + broadcast): operand reuse of the tile; prefer bigger tiles on ties.
                score = (mr * vecs) / (mr + vecs) + 0.01 * mr * vecs + 0.001 * mr
                if best is None or score > best[0]:
                    best = (score, mr, rows, chunks)
    if best is None:
        return 1, 1, 1, width
    _, mr, rows, chunks = best
    return mr, rows, chunks, width


@dataclass
class _Prepared:
    sch: object
    root: object
    main: object
    info: _MainInfo
    iters: list
    prologue: list      # stages left before the main block (padding), scheduled as elementwise
    epilogue: list      # stages after the main block (computed per tile when `fusable`)
    out_buf: object
    is_output: bool     # the main block writes the function output (no epilogue stage)
    reads: list         # the main block's operand regions
    fusable: bool       # every epilogue stage is pointwise over the main block's output (see _pointwise_over)


def _prepare(func, analyse: bool = True) -> _Prepared | None:
    """Find the one reduction block, inline plain prologue/epilogue stages around it.

    `analyse=False`: the caller knows the main block's structure (the NCHW[x]c int8 conv, whose
    weight's innermost axis is the 4-way dot, not the output lane) and needs no `_MainInfo`."""
    _, s_tir, tirx = _ir()
    sch = s_tir.Schedule(func)
    root = _root(sch)
    blocks = list(sch.get_child_blocks(root))
    stmts = [sch.get(b) for b in blocks]
    red = [i for i, s in enumerate(stmts) if not _is_spatial_block(s)]
    if len(red) != 1 or not _is_reduction_block(stmts[red[0]]):
        return None
    mi = red[0]
    if not all(_is_spatial_block(s) for i, s in enumerate(stmts) if i != mi):
        return None
    main = blocks[mi]
    info = _analyse_main(stmts[mi]) if analyse else None
    if analyse and (info is None or info.kind == "reduce"):
        return None
    loops = sch.get_loops(main)
    iters = list(stmts[mi].iter_vars)
    if len(loops) != len(iters):
        return None
    for lp, iv in zip(loops, iters):
        if _int(sch.get(lp).extent) != _int(iv.dom.extent) or _int(iv.dom.extent) is None:
            return None

    # Prologue: plain copies and casts are inlined; padding (if_then_else) stays a separate, scheduled stage.
    prologue_left = []
    for i in range(mi):
        blk = blocks[i]
        if _has_if_then_else(stmts[i]):
            prologue_left.append(blk)
            continue
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001 - a stage that cannot inline stays separate
            prologue_left.append(blk)
    # Epilogue: inline chains into the last stage(s); a value its consumers read more than once stays a
    # stage of its own (inlined, each read recomputes its whole chain: a QDQ GELU read the requantized
    # dense output 25 times in one expression, 2.2x the epilogue's time)
    epilogue = []
    for i in range(mi + 1, len(blocks)):
        if _reads_of(sch, blocks[i]) > 1:
            epilogue.append(blocks[i])
            continue
        try:
            sch.compute_inline(blocks[i])
        except Exception:  # noqa: BLE001
            epilogue.append(blocks[i])

    main_stmt = sch.get(main)
    out_buf = main_stmt.writes[0].source
    is_output = not any(out_buf.same_as(b) for b in sch.get(root).alloc_buffers)
    if is_output and epilogue:
        return None
    reads = [r for r in main_stmt.reads if not r.source.same_as(out_buf)]
    fusable = _pointwise_over(sch, epilogue, out_buf)
    return _Prepared(sch, root, main, info, iters, prologue_left, epilogue, out_buf, is_output, reads, fusable)


def _reads_of(sch, block) -> int:
    """How many loads of `block`'s output its consumer blocks make (in their bodies, as written now)."""
    import tvm

    tvm_ffi, _, _ = _ir()
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return 0
    buf = stmt.writes[0].source
    count = [0]

    def visit(node):
        if node.source.same_as(buf):
            count[0] += 1

    for consumer in sch.get_consumers(block):
        tvm_ffi.structural_walk(sch.get(consumer).body, (tvm.ir.TensorLoad, visit), order="post")
    return count[0]


def _identity_access(region, iter_vars, shape) -> bool:
    """`region` is buf[v0, v1, ...] with the block's own iterators in order, over the whole of `shape`."""
    if len(region.region) != len(iter_vars) or len(iter_vars) != len(shape):
        return False
    for r, iv, dim in zip(region.region, iter_vars, shape):
        if _int(r.extent) != 1 or not r.min.same_as(iv.var) or _int(iv.dom.extent) != _int(dim):
            return False
    return True


def _pointwise_over(sch, epilogue: list, out_buf) -> bool:
    """Whether each epilogue stage computes its output point for point from the main block's output.

    Only such stages can be computed per register tile: `reverse_compute_at` sizes a consumer's loops from
    the region it reads of the tile, so a consumer that reads the main output elsewhere than where it
    writes (channel-axis padding, a transpose, a broadcast, a window) would be computed on part of its
    domain only and leave the rest unwritten. Guarded reads (`if_then_else` from inlined padding) count as
    reads at their index, which is what makes the padded channels invisible to the region analysis.
    """
    shape = [_int(d) for d in out_buf.shape]
    produced = [out_buf]
    for blk in epilogue:
        stmt = sch.get(blk)
        if len(stmt.writes) != 1 or not _is_spatial_block(stmt):
            return False
        if not _identity_access(stmt.writes[0], stmt.iter_vars, shape):
            return False
        for r in stmt.reads:
            if any(r.source.same_as(b) for b in produced) and not _identity_access(r, stmt.iter_vars, shape):
                return False
        produced.append(stmt.writes[0].source)
    # Inlined stages can also read the main output inside an expression the block's read regions
    # summarise loosely; every load of a produced buffer must be at the block's own indices.
    return all(_loads_at_own_indices(sch.get(blk), produced) for blk in epilogue)


def _loads_at_own_indices(stmt, produced: list) -> bool:
    import tvm

    tvm_ffi, _, _ = _ir()
    own = [iv.var for iv in stmt.iter_vars]
    ok = [True]

    def visit(node):
        if any(node.source.same_as(b) for b in produced):
            idx = list(node.indices)
            if len(idx) != len(own) or not all(i.same_as(v) for i, v in zip(idx, own)):
                ok[0] = False

    tvm_ffi.structural_walk(stmt.body, (tvm.ir.TensorLoad, visit), order="post")
    return ok[0]


def _read_index(sch, block, buf) -> int:
    for i, r in enumerate(sch.get(block).reads):
        if r.source.same_as(buf):
            return i
    raise ValueError("buffer not read by block")


def _unroll_window(sch, red_loops) -> None:
    red_ext = [_int(sch.get(lp).extent) or 0 for lp in red_loops]
    if red_loops and red_ext[-1] <= 7:
        sch.unroll(red_loops[-1])
        if len(red_loops) >= 2 and red_ext[-2] * red_ext[-1] <= 16:
            sch.unroll(red_loops[-2])


def epilogue_per_tile(sch, epilogue: list, at, unroll_outer: bool = True) -> None:
    """Each epilogue stage computed under loop `at` (one register tile), its loops unrolled but the
    innermost, which is vectorized: the fused ops run on the tile in registers before its one store.
    `unroll_outer=False` unrolls only the loop next to the vector one (the tile's pixels)."""
    for blk in epilogue:
        sch.reverse_compute_at(blk, at, preserve_unit_loops=True)
        eloops = sch.get_loops(blk)[1:]
        for lp in (eloops[:-1] if unroll_outer else eloops[-2:-1]):
            sch.unroll(lp)
        if eloops:
            sch.vectorize(eloops[-1])


def split_init(sch, main, first_reduction) -> None:
    """The tile's zero-init split off before `first_reduction`, unrolled, its innermost loop vectorized."""
    init = sch.decompose_reduction(main, first_reduction)
    iloops = sch.get_loops(init)[1:]
    for lp in iloops[:-1]:
        sch.unroll(lp)
    if iloops:
        sch.vectorize(iloops[-1])


def _finish_packed(sch, main, first_reduction, prologue: list, cfg: CpuConfig, lanes: int) -> None:
    """The accumulator tile's zero-init split off (unrolled, its innermost loop in `lanes` vectors) and the
    prologue stages (padding) scheduled as elementwise kernels."""
    init = sch.decompose_reduction(main, first_reduction)
    iloops = sch.get_loops(init)[1:]
    for lp in iloops[:-1]:
        sch.unroll(lp)
    if iloops:
        inner = iloops[-1]
        if (_int(sch.get(inner).extent) or 0) > lanes:
            outer, inner = sch.split(inner, factors=[None, lanes])
            sch.unroll(outer)
        sch.vectorize(inner)
    for blk in prologue:
        schedule_spatial_block(sch, blk, cfg)


def conv2d_packed(func, cfg: CpuConfig):
    """conv2d (NCHW, not depthwise) vectorised over output channels with weights prepacked to OIHW[x]o.

    The register tile is (vectors of output channels) x (output pixels): per reduction step it loads
    `nf` weight vectors and broadcasts `nx*ny` input pixels, so strided and 1x1 convolutions alike
    run at full vector width whatever the spatial size. The weight repacking is a separate
    `layout_rewrite_preproc` stage that SplitLayoutRewritePreproc + FoldConstant move to compile time.
    """
    _, s_tir, tirx = _ir()

    prep = _prepare(func)
    if prep is None or prep.info.kind != "conv2d" or prep.info.m is None or not prep.fusable:
        return None
    sch, root, main, info, iters = prep.sch, prep.root, prep.main, prep.info, prep.iters
    if len(iters) != 7 or [iv.iter_type for iv in iters] != [tirx.IterVar.DataPar] * 4 + [tirx.IterVar.CommReduce] * 3:
        return None
    n_v, f_v, y_v, x_v = (iv.var for iv in iters[:4])
    if (info.m, info.v) != (1, 3):
        return None
    # The weight: a function parameter indexed exactly [f, rc, ry, rx].
    weight = None
    for r in prep.reads:
        idx = [x.min for x in r.region]
        if len(idx) == 4 and all(isinstance(e, tirx.Var) for e in idx) and \
                [e.same_as(iv.var) for e, iv in zip(idx, [iters[1], iters[4], iters[5], iters[6]])] == [True] * 4:
            weight = r.source
    if weight is None or any(weight.same_as(b) for b in sch.get(root).alloc_buffers):
        return None
    bits = prep.out_buf.dtype.bits
    ext = [_int(iv.dom.extent) for iv in iters]
    F, Y, X = ext[1], ext[2], ext[3]
    # The widest vector that divides the output channels: on AVX-512 a conv with 24 channels runs on
    # 8-lane (ymm) vectors rather than falling back to the spatially vectorised rule.
    lanes = cfg.lanes(bits)
    while lanes > 8 and F % lanes:
        lanes //= 2
    if lanes < 2 or F % lanes:
        return None
    # Accumulators only: with a larger tile LLVM keeps reused input broadcasts in registers and spills.
    budget = cfg.accumulators
    best = None
    for nf in _divisors_le(F // lanes, 4):
        for nx in _divisors_le(X, budget // nf):
            for ny in (_divisors_le(Y, budget // (nf * nx)) if nx == X else [1]):
                acc = nf * nx * ny
                score = acc / (nf + nx * ny) + 0.001 * acc
                if best is None or score > best[0]:
                    best = (score, nf, nx, ny)
    _, nf, nx, ny = best
    vf = nf * lanes

    # Weights prepacked to [F/vf, C, KH, KW, vf] (folded at compile time for constant weights).
    wblk = sch.cache_read(main, _read_index(sch, main, weight), "global")
    sch.transform_layout(wblk, ("write", 0), lambda f, c, kh, kw: (f // vf, c, kh, kw, f % vf))
    sch.annotate(wblk, "meta_schedule.layout_rewrite_preproc", True)

    epilogue = list(prep.epilogue)
    if prep.is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    else:
        sch.set_scope(main, 0, TILE_SCOPE)
    # Accumulator tile with the channel innermost, so the vector accesses are contiguous.
    sch.transform_layout(main, ("write", 0), lambda n, f, y, x: (n, y, x, f))

    n_l, f_l, y_l, x_l, rc, ry, rx = sch.get_loops(main)
    fo, fv, fl = sch.split(f_l, factors=[None, nf, lanes])
    xo, xi = sch.split(x_l, factors=[None, nx])
    yo, yi = sch.split(y_l, factors=[None, ny])
    w_bytes = F * ext[4] * ext[5] * ext[6] * (bits // 8)
    outer = [n_l, yo, xo, fo] if w_bytes <= cfg.l2_bytes // 2 else [n_l, fo, yo, xo]
    sch.reorder(*outer, rc, ry, rx, yi, xi, fv, fl)
    fused = sch.fuse(*outer)
    if cfg.threads > 1 and (_int(sch.get(fused).extent) or 1) > 1:
        sch.parallel(fused)
    _unroll_window(sch, [rc, ry, rx])
    for lp in (yi, xi, fv):
        sch.unroll(lp)
    sch.vectorize(fl)

    for blk in epilogue:
        sch.reverse_compute_at(blk, fused, preserve_unit_loops=True)
        eloops = sch.get_loops(blk)[1:]
        if len(eloops) == 4:
            en, ef, ey, ex = eloops
            sch.reorder(en, ey, ex, ef)
            for lp in (ey, ex):
                sch.unroll(lp)
            efo, efl = sch.split(ef, factors=[None, lanes])
            sch.unroll(efo)
            sch.vectorize(efl)
    _finish_packed(sch, main, rc, prep.prologue, cfg, lanes)
    return sch, "conv2d"


def matmul_packed(func, cfg: CpuConfig):
    """Dense / matmul by a weight (`[M, K] x [K, N]`, B a function parameter) with B prepacked into panels.

    B is stored as `[N / vn, K, vn]` (a `layout_rewrite_preproc` stage that SplitLayoutRewritePreproc +
    FoldConstant move to compile time), so each register tile streams one contiguous panel instead of
    K rows `N` floats apart; the panel loop is outermost, so a panel stays in cache over all rows of A.
    Tile: `mr` rows x `nv` vectors (`mr * nv` accumulators), the bias/activation epilogue per tile.
    """
    _, s_tir, tirx = _ir()

    prep = _prepare(func)
    if prep is None or prep.info.kind != "matmul" or not prep.fusable:
        return None
    sch, root, main, iters = prep.sch, prep.root, prep.main, prep.iters
    if len(iters) != 3 or [iv.iter_type for iv in iters] != [tirx.IterVar.DataPar] * 2 + [tirx.IterVar.CommReduce]:
        return None
    if prep.info.v != 1 or prep.info.m not in (0, None) or (prep.info.m is None and _int(iters[0].dom.extent) != 1):
        return None  # (m is None for a single row: a classifier's GEMV)
    weight = None
    for r in prep.reads:
        idx = [x.min for x in r.region]
        if len(idx) == 2 and all(isinstance(e, tirx.Var) for e in idx) and idx[0].same_as(iters[2].var) \
                and idx[1].same_as(iters[1].var):
            weight = r.source
    if weight is None or any(weight.same_as(b) for b in sch.get(root).alloc_buffers):
        return None
    bits = prep.out_buf.dtype.bits
    M, N, K = (_int(iv.dom.extent) for iv in iters)
    # half-width vectors where N does not divide by the full width (a 1000-class classifier on AVX-512:
    # the generic reduction rule took it at 0.38 ms, 7% of MobileNetV2)
    lanes = next((ln for ln in (cfg.lanes(bits), cfg.lanes(bits) // 2) if ln >= 4 and N is not None and N % ln == 0), 0)
    if lanes < 2 or M is None or K is None:
        return None
    scored = []
    for nv in _divisors_le(N // lanes, 4):
        for mr in _divisors_le(M, 8):
            acc = mr * nv
            # accumulators + the nv panel vectors + a broadcast must fit the register file
            if acc > cfg.accumulators or acc + nv + 2 > cfg.vector_regs:
                continue
            scored.append((acc / (mr + nv) + 0.001 * acc, mr, nv))
    if not scored:
        return None
    ranked = [(mr, nv) for _, mr, nv in sorted(scored, key=lambda t: -t[0])]
    mr, nv = pick("matmul.tile", ranked[:8], ranked[0])
    vn = nv * lanes

    wblk = sch.cache_read(main, _read_index(sch, main, weight), "global")
    sch.transform_layout(wblk, ("write", 0), lambda k, n: (n // vn, k, n % vn))
    sch.annotate(wblk, "meta_schedule.layout_rewrite_preproc", True)

    epilogue = list(prep.epilogue)
    if prep.is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    else:
        sch.set_scope(main, 0, TILE_SCOPE)
    i_l, j_l, k_l = sch.get_loops(main)
    jo, jv, jl = sch.split(j_l, factors=[None, nv, lanes])
    io, ii = sch.split(i_l, factors=[None, mr])
    sch.reorder(jo, io, k_l, ii, jv, jl)
    fused = sch.fuse(jo, io)
    if cfg.threads > 1 and (_int(sch.get(fused).extent) or 1) > 1:
        sch.parallel(fused)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(jl)
    for blk in epilogue:
        sch.reverse_compute_at(blk, fused, preserve_unit_loops=True)
        eloops = sch.get_loops(blk)[1:]
        if len(eloops) == 2:
            ei, ej = eloops
            sch.unroll(ei)
            ejo, ejl = sch.split(ej, factors=[None, lanes])
            sch.unroll(ejo)
            sch.vectorize(ejl)
    _finish_packed(sch, main, k_l, prep.prologue, cfg, lanes)
    return sch, "matmul"


def _deinterleave_stride2(sch, prep: _Prepared) -> None:
    """Stride-2 windows over a padded input: store the padding stage as [..., W/2, 2] -> [..., 2, W/2]
    (even columns, then odd ones), so the vectorised reads of the main block become contiguous."""
    from tvm.sym.pattern import detect_linear_equation

    v_var = prep.iters[prep.info.v].var
    for r in prep.reads:
        coeffs = detect_linear_equation(r.region[-1].min, [v_var])
        if len(coeffs) != 2 or _int(coeffs[0]) != 2:
            continue
        for blk in prep.prologue:
            buf = sch.get(blk).writes[0].source
            if not buf.same_as(r.source) or len(buf.shape) != 4 or (_int(buf.shape[-1]) or 1) % 2:
                continue
            sch.transform_layout(blk, ("write", 0), lambda n, c, y, x: (n, c, y, x % 2, x // 2))


def tiled_reduction(func, cfg: CpuConfig):
    """Schedule a kernel built around one reduction block; returns (schedule, rule kind) or None."""
    _, s_tir, tirx = _ir()
    prep = _prepare(func)
    if prep is None:
        return None
    sch, main, info, iters = prep.sch, prep.main, prep.info, prep.iters
    prologue_left, epilogue, out_buf, is_output = prep.prologue, list(prep.epilogue), prep.out_buf, prep.is_output
    if is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    if info.kind == "pool":
        # A pool reads each input once per window tap: its padding is read in place (a bounds check per tap)
        # instead of a padded copy of the whole input (ResNet18's uint8 max pool: 181 -> 24 us).
        for blk in list(prologue_left):
            try:
                sch.compute_inline(blk)
                prologue_left.remove(blk)
            except Exception:  # noqa: BLE001 - a stage that cannot inline stays separate
                pass
        prep.prologue = prologue_left
    _deinterleave_stride2(sch, prep)

    bits = out_buf.dtype.bits
    lanes = cfg.lanes(bits)
    ext = [_int(iv.dom.extent) for iv in iters]
    ext_v = ext[info.v]
    ext_m = ext[info.m] if info.m is not None else 1
    ext_row = ext[info.row] if info.row is not None else 1
    mr, rows, chunks, width = _choose_tile(cfg, lanes, ext_v, ext_m, ext_row)

    loops = sch.get_loops(main)
    outer, inner = [], []
    split_of = {}
    for i, lp in enumerate(loops):
        if iters[i].iter_type != tirx.IterVar.DataPar:
            continue
        if i == info.v:
            o, c, w = sch.split(lp, factors=[None, chunks, width])
            split_of[i] = (o, [c, w])
        elif i == info.m and mr > 1:
            o, n = sch.split(lp, factors=[None, mr])
            split_of[i] = (o, [n])
        elif i == info.row and rows > 1:
            o, n = sch.split(lp, factors=[None, rows])
            split_of[i] = (o, [n])
        else:
            split_of[i] = (lp, [])
    spatial_order = [i for i in range(len(iters)) if iters[i].iter_type == tirx.IterVar.DataPar]
    # Outer tile order: keep the output order, but move the reuse axis (m) innermost among the outer loops
    # when the streamed operand's panel is what should stay in cache (many output channels, small spatial).
    outer = [split_of[i][0] for i in spatial_order]
    if info.m is not None and info.m in split_of and mr > 1:
        pass
    inner = []
    if info.m is not None and info.m in split_of and split_of[info.m][1]:
        inner += split_of[info.m][1]
    if info.row is not None and split_of.get(info.row, (None, []))[1]:
        inner += split_of[info.row][1]
    inner += split_of[info.v][1]
    red_loops = [loops[i] for i in range(len(iters)) if iters[i].iter_type == tirx.IterVar.CommReduce]
    sch.reorder(*outer, *red_loops, *inner)
    # Fuse the outer tile loops into one parallel loop.
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    n_tiles = _int(sch.get(fused).extent) or 1
    if cfg.threads > 1 and n_tiles > 1:
        sch.parallel(fused)
    # Small window loops unrolled; the register tile unrolled and vectorised.
    _unroll_window(sch, red_loops)
    for lp in inner[:-1]:
        sch.unroll(lp)
    if width > 1:
        sch.vectorize(inner[-1])

    if prep.fusable:
        # Epilogue computed per tile, the accumulator tile local.
        for blk in epilogue:
            try:
                sch.reverse_compute_at(blk, fused, preserve_unit_loops=True)
            except Exception:  # noqa: BLE001
                return None
            elp = sch.get_loops(blk)[1:]
            if elp:
                e_ext = _int(sch.get(elp[-1]).extent) or 1
                vectorize_inner(sch, elp[-1], e_ext, lanes)
        if not is_output:
            sch.set_scope(main, 0, TILE_SCOPE)
    else:
        # The epilogue reshapes the result (channel padding, transposes): it runs after the whole
        # main block, over its own domain, from the main block's output in global memory.
        for blk in epilogue:
            schedule_spatial_block(sch, blk, cfg)
    init = sch.decompose_reduction(main, red_loops[0])
    ilp = sch.get_loops(init)[1:]
    for lp in ilp[:-1]:
        sch.unroll(lp)
    if ilp and width > 1:
        sch.vectorize(ilp[-1])
    for blk in prologue_left:
        schedule_spatial_block(sch, blk, cfg)
    return sch, info.kind


# --------------------------------------------------------------------------------------------------
# reductions and elementwise


def row_reduction(func, cfg: CpuConfig):
    """Row-wise reductions (softmax, layer norm) with each row's sums and maxima in vector registers.

    The blocks must share leading spatial axes (one row each) and end in an injective block, as for
    dlight's rule; every reduction over one innermost axis of at least two whole vectors (the target's
    width, or a power-of-two part of it down to 4 lanes) is factored (`rfactor`) into `lanes` partial
    results kept in a register, reduced across lanes once per row. dlight's rule
    reduces lane by lane, one dependent add per element: 5-11x slower on BERT-mini's layer norm.
    Returns None (dlight's rule then applies) when no reduction can be factored this way.
    """
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    _, s_tir, tirx = _ir()
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None or len(infos) < 2 or not infos[-1].is_injective():
        return None
    leading = min(len(bi.dom_kind()) - len(bi.dom_kind().lstrip("S")) for bi in infos)
    if leading == 0:
        return None
    # An injective stage read once (softmax's `x - max`) is computed where it is read, not stored.
    for bi in infos[:-1]:
        if bi.is_injective() and len(sch.get_consumers(bi.block_rv)) == 1:
            try:
                sch.compute_inline(bi.block_rv)
            except Exception:  # noqa: BLE001 - a stage that cannot be inlined stays a stage of the row
                pass
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    factored = []
    for bi in infos[:-1]:
        kinds = bi.dom_kind()
        if bi.is_injective() or not kinds.endswith("R") or kinds.count("R") != 1:
            continue
        stmt = sch.get(bi.block_rv)
        loops = sch.get_loops(bi.block_rv)
        extent = _int(sch.get(loops[-1]).extent)
        lanes = cfg.lanes(stmt.writes[0].source.dtype.bits)
        while lanes >= 4 and extent is not None and extent % lanes:
            lanes //= 2  # rows of 24 on AVX-512: 8-lane partial results
        if lanes < 4 or extent is None or extent < 2 * lanes:
            continue
        _, lane = sch.split(loops[-1], factors=[None, lanes])
        factored.append(sch.get(sch.rfactor(lane, factor_axis=len(kinds) - 1)))
    if not factored:
        return None

    last = infos[-1].block_rv
    loops = sch.get_loops(last)
    row = sch.fuse(*loops[:leading]) if leading > 1 else loops[0]
    if cfg.threads > 1:
        sch.parallel(row)
    stages = list(sch.get_child_blocks(_root(sch)))[:-1]
    for blk in reversed(stages):
        sch.compute_at(blk, row, preserve_unit_loops=True)
    for blk in stages + [last]:
        stmt = sch.get(blk)
        if any(stmt.same_as(f) for f in factored):
            # rfactor's loops: ..., lane (spatial), chunk (reduction): chunks outside, lanes in a register
            lane, chunk = sch.get_loops(blk)[-2:]
            sch.reorder(chunk, lane)
            sch.set_scope(blk, 0, TILE_SCOPE)
            sch.vectorize(lane)
            init = sch.decompose_reduction(blk, chunk)
            sch.vectorize(sch.get_loops(init)[-1])
        elif all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars):
            inner = sch.get_loops(blk)[-1]
            vectorize_inner(sch, inner, _int(sch.get(inner).extent) or 1, cfg.lanes(stmt.writes[0].source.dtype.bits))
        # the cross-lane reduction of a factored block: `lanes` scalar steps once per row
    return sch, "row-reduction"


def reduction(func, cfg: CpuConfig, tvm_target):
    """TVM dlight's CPU reduction rule (softmax, layer norm, mean...)."""
    from tvm.s_tir.dlight.cpu import Reduction

    sch = Reduction().apply(func, tvm_target, False)
    if sch is None:
        return None
    return sch, "reduction"


def elementwise(func, cfg: CpuConfig):
    """Injective kernels: inline chains, then parallel + vectorised loops per remaining stage."""
    _, s_tir, _ = _ir()
    sch = s_tir.Schedule(func)
    root = _root(sch)
    blocks = list(sch.get_child_blocks(root))
    if not blocks or not all(_is_spatial_block(sch.get(b)) for b in blocks):
        return None
    left = []
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001
            left.append(b)
    left.append(blocks[-1])
    for b in left:
        try:
            schedule_spatial_block(sch, b, cfg)
        except Exception:  # noqa: BLE001
            return None
    return sch, "elementwise"
