"""Integer schedules: the 8-bit NCHW[x]c conv (`conv2d_nchwc_int8` of `compile/layout.py`) tensorized
with the target's 4-way 8-bit dot product.

Per output lane the compute adds 4 products of adjacent input channels; the innermost
`[lanes] x [4]` step is one dot-product instruction (sequence):

- x86 AVX-512 VNNI: `vpdpbusd` (u8 x s8 -> s32, 4 per lane, no intermediate saturation);
- x86 AVX-512BW / AVX2: `vpmaddubsw` (u8 x s8 pairs -> s16, saturating) + `vpmaddwd` by ones (-> s32).
  Exact only when no pair overflows int16: the rewrite (`compile/int8.py`) names such convs
  `conv2d_nchwc_int8` only when 255 * (|w_a| + |w_b|) fits for every pair (always so for weights
  quantized with `reduce_range`, as `compile --int8` does on x86 without VNNI); the others are
  `conv2d_nchwc_int8_wide`, tensorized on VNNI only;
- aarch64 `+dotprod` (Cortex-A76, A78): `sdot` (s8 x s8, int8 activations).

Elsewhere (NEON without dotprod, u8 activations on ARM, s8 activations on x86) the same tile is
built from widening multiplies LLVM vectorises by itself. The register tile is the fp32 one of
`nchwc.py` (nf channel blocks x nx pixels of int32 accumulators), the epilogue (zero-point
correction, requantization, clamps, the next layer's quantize) fused per tile before one store.

The dense kernel (`dense_int8`: [.., M, K] x packed [.., N/L, K/4, L, 4]) schedules batch-matmuls of
two activations too (`batch_matmul_int8_wide`: the run-time operand spans all of int8, so on AVX2
they are widening multiplies, `vpmaddwd` pairs, never `vpmaddubsw`). Their helpers get rules here
as well: the run-time packing (`pack_int8`) and the zero-point row sums (`row_sums_int8`).
"""

from __future__ import annotations

from .config import STACK_TILE_BYTES, TILE_SCOPE, CpuConfig
from .knobs import pick

MAIN_BLOCK = "conv2d_nchwc_int8"
WIDE_BLOCK = "conv2d_nchwc_int8_wide"
_REGISTERED: dict[tuple, str] = {}


def _register(dot: str, lanes: int, a_dtype: str) -> str | None:
    """The name of the TensorIntrin doing C[lanes] += A[4] . B[lanes, 4] with `dot`, registered once."""
    key = (dot, lanes, a_dtype)
    if key in _REGISTERED:
        return _REGISTERED[key]
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    b_dtype = "int8"
    nbytes = lanes * 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    a_x4, a_xn, b_xn, c_xl = f"{a_dtype}x4", f"{a_dtype}x{nbytes}", f"int8x{nbytes}", f"int32x{lanes}"

    if dot == "vnni":
        name = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                # LLVM 20 declares vpdpbusd on byte vectors (<64 x i8>), not on the i32 words TVM's own
                # VNNI intrinsic passes (which no longer type-checks). One expression: a name assigned in
                # TVMScript becomes a local buffer, i.e. a workspace allocation per call.
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(name), C.vload([0], dtype=c_xl),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_x4), dtype="int32"), lanes), dtype=f"int8x{nbytes}"),
                    B.vload([0, 0], dtype=b_xn), dtype=c_xl)
    elif dot in ("avx2", "avx512bw"):
        suffix = "avx2" if lanes == 8 else "avx512"
        pairs, i16 = (f"llvm.x86.{suffix}.pmadd.ub.sw" if lanes == 8 else "llvm.x86.avx512.pmaddubs.w.512",
                      f"int16x{lanes * 2}")
        widen = "llvm.x86.avx2.pmadd.wd" if lanes == 8 else "llvm.x86.avx512.pmaddw.d.512"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=c_xl) + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(widen),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(pairs),
                        T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_x4), dtype="int32"), lanes), dtype=a_xn),
                        B.vload([0, 0], dtype=b_xn), dtype=i16),
                    T.broadcast(T.int16(1), lanes * 2), dtype=c_xl)
    elif dot == "sdot":

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), C.vload([0], dtype=c_xl),
                    B.vload([0, 0], dtype=b_xn),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_x4), dtype="int32"), lanes), dtype=a_xn),
                    dtype=c_xl)
    else:
        return None
    intrin = f"autoglm_dot_{lanes}x4_{a_dtype}_{dot}"
    TensorIntrin.register(intrin, desc, impl, override=True)
    _REGISTERED[key] = intrin
    return intrin


def _int8_budget(cfg: CpuConfig) -> int:
    """Accumulators of an integer kernel's register tile: those of `cfg`, at most 16 off x86, and on AVX-512
    one short of a full 1 KiB tile: MobileNetV2 int8 with 16-accumulator tiles measured 3.68-3.83 ms, capped
    at 15 3.25-3.43 ms (1 thread, interleaved; the fp32 model was unchanged by the same cap, so its rules
    keep 16)."""
    budget = min(cfg.accumulators, 16 if cfg.arch != "x86_64" else cfg.accumulators)
    return min(budget, max(1, (STACK_TILE_BYTES - 1) // max(1, cfg.vector_bits // 8)))


# every (dot product, lanes, activation dtype) that dot_intrinsic can hand out
_ALL_DOTS = (("vnni", 8, "uint8"), ("vnni", 16, "uint8"), ("avx2", 8, "uint8"), ("avx512bw", 16, "uint8"),
             ("sdot", 4, "int8"))


def register_dot_intrinsics() -> None:
    """Register all of the toolkit's 8-bit dot-product intrinsics: a tuning record of an integer kernel names
    one in its trace, and TVM refuses to parse the record while the name is unknown."""
    for dot, lanes, a_dtype in _ALL_DOTS:
        _register(dot, lanes, a_dtype)


def dot_intrinsic(cfg: CpuConfig, lanes: int, a_dtype: str, wide: bool) -> str | None:
    """The tensor intrinsic for one 8-bit conv on `cfg`, or None to leave it to LLVM's vectoriser."""
    dot = cfg.int8_dot
    if dot in ("vnni", "avx2", "avx512bw"):
        if a_dtype != "uint8" or (wide and dot != "vnni"):
            return None
        if lanes not in (8, 16) or (dot == "avx2" and lanes != 8):
            return None
        if dot == "avx512bw" and lanes == 8:
            dot = "avx2"  # a 256-bit block on an AVX-512 machine: the AVX2 forms
    elif dot == "sdot":
        if a_dtype != "int8" or lanes != 4:
            return None
    else:
        return None
    return _register(dot, lanes, a_dtype)


def conv2d_nchwc_int8(func, cfg: CpuConfig):
    """Schedule a fused 8-bit NCHW[x]c conv kernel; (schedule, "conv2d-nchwc-int8[-dot]") or None."""
    from .nchwc import _block_names
    from .rules import _divisors_le, _int, _prepare, epilogue_per_tile, schedule_spatial_block, split_init

    names = _block_names(func)
    if MAIN_BLOCK not in names and WIDE_BLOCK not in names:
        return None
    prep = _prepare(func, analyse=False)
    if prep is None or not prep.fusable:
        return None
    sch, main = prep.sch, prep.main
    stmt = sch.get(main)
    if stmt.name_hint not in (MAIN_BLOCK, WIDE_BLOCK):
        return None
    ext = [_int(iv.dom.extent) for iv in prep.iters]
    if any(e is None for e in ext) or len(ext) != 10:
        return None
    lanes = ext[4]
    a_dtype = str(stmt.reads[0].source.dtype) if stmt.reads[0].source.dtype != "int32" else str(stmt.reads[1].source.dtype)
    intrin = dot_intrinsic(cfg, lanes, a_dtype, stmt.name_hint == WIDE_BLOCK)
    budget = _int8_budget(cfg)

    epilogue = list(prep.epilogue)
    if prep.is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    else:
        sch.set_scope(main, 0, TILE_SCOPE)

    n_l, f_l, y_l, x_l, v_l, icb, ry, rx, ic4, k_l = sch.get_loops(main)
    F, X = ext[1], ext[3]
    scored = []
    for nf in _divisors_le(F, 4):
        # accumulators + the weight vectors + the broadcast input word and the dot's temporaries
        cap = min(X, 8, min(budget, cfg.vector_regs - nf - 4) // nf)
        for nx in _divisors_le(X, max(1, cap)):
            acc = nf * nx
            scored.append((acc / (nf + nx) + 0.001 * acc, nf, nx))
    ranked = [(nf, nx) for _, nf, nx in sorted(scored, key=lambda t: -t[0])]
    nf, nx = pick("conv.tile", ranked[:8], ranked[0])
    fo, fi = sch.split(f_l, factors=[None, nf])
    po, pi = sch.split(x_l, factors=[None, nx])
    w_bytes = F * lanes * ext[5] * ext[6] * ext[7] * ext[8] * ext[9]
    weights_inner = pick("conv.weights_inner", [True, False], w_bytes <= cfg.l2_bytes // 2)
    outer = [n_l, y_l, po, fo] if weights_inner else [n_l, fo, y_l, po]
    # tensorized: the [lanes] x [4] step is the intrinsic; else the 4 products unrolled over lane vectors
    inner = [v_l, k_l] if intrin is not None else [k_l, v_l]
    sch.reorder(*outer, icb, ry, rx, ic4, fi, pi, *inner)
    fused = sch.fuse(*outer)
    if cfg.threads > 1 and (_int(sch.get(fused).extent) or 1) > 1:
        sch.parallel(fused)
    for lp in (ry, rx):
        if (_int(sch.get(lp).extent) or 0) <= 7:
            sch.unroll(lp)
    sch.unroll(fi)
    sch.unroll(pi)
    # An epilogue adding an 8-bit residual keeps its channel-block loop rolled: fully unrolled, LLVM scalarised
    # every block but the first (MobileNetV2's 144->24 projection at 56x56: 411 -> 114 us, same output). Without
    # a residual the unrolled blocks stay vector and are faster (rolled: up to 2x slower on MobileNetV2).
    residual = any(str(r.source.dtype) in ("uint8", "int8") for blk in epilogue for r in sch.get(blk).reads)
    epilogue_per_tile(sch, epilogue, fused, unroll_outer=not residual)
    if intrin is None:  # vectorized before the init is split off (a reduction block without init cannot be)
        sch.unroll(k_l)
        sch.vectorize(v_l)
    split_init(sch, main, icb)
    kind = "conv2d-nchwc-int8"
    if intrin is not None:
        sch.tensorize(v_l, intrin)
        kind += f"-{cfg.int8_dot}"
    for blk in prep.prologue:
        if intrin is None:
            try:
                sch.compute_inline(blk)  # the zero-point padding read in place
                continue
            except Exception:  # noqa: BLE001 - a stage that cannot inline is scheduled on its own
                pass
        # the dot product loads 4 input bytes as one word: the padded input is a buffer, not a predicate
        schedule_spatial_block(sch, blk, cfg)
    return sch, kind


DENSE_BLOCKS = ("dense_int8", "dense_int8_wide", "batch_matmul_int8", "batch_matmul_int8_wide")


def dense_int8(func, cfg: CpuConfig):
    """Schedule a fused 8-bit dense kernel (`compile/int8.py`'s `dense_int8`: [.., M, K] x packed
    [N/L, K/4, L, 4] -> int32): mr rows x nf panels of L-lane accumulators, the [L] x [4] step
    tensorized with the target's dot product. (schedule, "dense-int8[-dot]") or None."""
    from .nchwc import _block_names
    from .rules import _divisors_le, _int, _prepare, epilogue_per_tile, split_init

    if not any(n in DENSE_BLOCKS for n in _block_names(func)):
        return None
    prep = _prepare(func, analyse=False)
    if prep is None:
        return None
    sch, main = prep.sch, prep.main
    stmt = sch.get(main)
    if stmt.name_hint not in DENSE_BLOCKS:
        return None
    ext = [_int(iv.dom.extent) for iv in prep.iters]
    if any(e is None for e in ext) or len(ext) < 4:
        return None
    # the packed operand is the read indexed by the innermost reduction iterator alone (data's is k4 * 4 + k)
    k_var = prep.iters[-1].var
    packed = next((r.source for r in stmt.reads if r.region[-1].min.same_as(k_var) and len(r.source.shape) >= 4), None)
    data = next((r.source for r in stmt.reads if not r.source.same_as(packed) and not r.source.same_as(prep.out_buf)
                 and str(r.source.dtype) in ("uint8", "int8")), None)
    if packed is None or data is None or str(packed.dtype) != "int8":
        return None
    lanes = _int(packed.shape[-2])
    intrin = dot_intrinsic(cfg, lanes, str(data.dtype), stmt.name_hint.endswith("_wide"))
    budget = _int8_budget(cfg)

    epilogue = list(prep.epilogue)
    if prep.is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    elif prep.fusable:
        sch.set_scope(main, 0, TILE_SCOPE)
    loops = sch.get_loops(main)
    *lead, m_l, n_l, k4_l, k_l = loops
    M, N = ext[-4], ext[-3]
    nb, l_l = sch.split(n_l, factors=[None, lanes])
    NB = N // lanes
    best = None
    for nf in _divisors_le(NB, 4):
        for mr in _divisors_le(M, max(1, min(8, (budget - 2) // nf))):
            acc = nf * mr
            score = acc / (nf + mr) + 0.001 * acc
            if best is None or score > best[0]:
                best = (score, nf, mr)
    _, nf, mr = best
    fo, fi = sch.split(nb, factors=[None, nf])
    mo, mi = sch.split(m_l, factors=[None, mr])
    inner = [l_l, k_l] if intrin is not None else [k_l, l_l]
    sch.reorder(*lead, fo, mo, k4_l, mi, fi, *inner)
    fused = sch.fuse(*lead, fo, mo)
    if cfg.threads > 1 and (_int(sch.get(fused).extent) or 1) > 1:
        sch.parallel(fused)
    sch.unroll(mi)
    sch.unroll(fi)
    if prep.fusable or prep.is_output:
        epilogue_per_tile(sch, epilogue, fused)
    else:
        # the epilogue slices off the zero columns that padded N to whole panels (compile/int8.py): it runs
        # after the main block, over its own domain
        from .rules import schedule_spatial_block

        for blk in epilogue:
            schedule_spatial_block(sch, blk, cfg)
    if intrin is None:
        sch.unroll(k_l)
        sch.vectorize(l_l)
    split_init(sch, main, k4_l)
    kind = "dense-int8"
    if intrin is not None:
        sch.tensorize(l_l, intrin)
        kind += f"-{cfg.int8_dot}"
    return sch, kind


PACK_BLOCKS = ("pack_int8_kn", "pack_int8_nk")
# below this many bytes an auxiliary int8 kernel (packing, row sums) runs on one thread: TVM's thread
# pool costs more to start than the copy itself (BERT-mini's 32 KiB operands: 1 us single-threaded)
PARALLEL_MIN_BYTES = 256 << 10


def _spatial_root_blocks(sch):
    from .rules import _is_spatial_block, _root

    return [(b, _is_spatial_block(sch.get(b))) for b in sch.get_child_blocks(_root(sch))]


def pack_int8(func, cfg: CpuConfig):
    """Schedule the run-time packing of a batch-matmul's B operand (`compile/int8.py`'s `pack_int8`, its
    movement producers inlined); (schedule, "pack-int8") or None.

    Loops stay in output order (panel, k/4, lane, byte). From [N, K] (`pack_int8_nk`, attention's K^T)
    the 4 bytes of a lane are adjacent in one source row: unrolled, LLVM copies them as one word
    (1.2 us for 4 x 128 x 64 here, 6.7 us vectorized by the elementwise rule). From [K, N]
    (`pack_int8_kn`) a lane's 4 bytes come from 4 rows: left scalar, LLVM's loop vectorizer makes the
    interleaving shuffles of 4 row vectors (0.8 us; 7-12 us with the 4 bytes or the lanes vectorized)."""
    from tvm import s_tir

    from .nchwc import _block_names
    from .rules import _int

    if not any(n in PACK_BLOCKS for n in _block_names(func)):
        return None
    sch = s_tir.Schedule(func)
    blocks = _spatial_root_blocks(sch)
    if not all(spatial for _, spatial in blocks) or sch.get(blocks[-1][0]).name_hint not in PACK_BLOCKS:
        return None
    for blk, _ in blocks[:-1]:
        sch.compute_inline(blk)  # squeeze / split / transpose in front: read in place
    main = blocks[-1][0]
    name = sch.get(main).name_hint
    *lead, nb, k4, lane, byte = sch.get_loops(main)
    outer = sch.fuse(*lead, nb) if lead else nb
    size = 1
    for lp in sch.get_loops(main):
        size *= _int(sch.get(lp).extent) or 1
    if cfg.threads > 1 and size >= PARALLEL_MIN_BYTES:
        sch.parallel(outer)
    if name == "pack_int8_nk":
        sch.unroll(byte)
    return sch, "pack-int8"


def row_sums_int8(func, cfg: CpuConfig):
    """Schedule `compile/int8.py`'s `row_sums_int8` (zero-point corrections of a batch-matmul): per row,
    vector adds of lane-wide column groups, then one horizontal sum; (schedule, "row-sums-int8") or None.
    (0.7 us for 4 x 128 x 64 bytes here; TVM's plain sum: 13.6 us.)"""
    from tvm import s_tir

    from .nchwc import _block_names
    from .rules import _int

    names = _block_names(func)
    if "row_sums_int8" not in names or "row_sums_int8_part" not in names:
        return None
    sch = s_tir.Schedule(func)
    blocks = [b for b, _ in _spatial_root_blocks(sch)]
    stmts = [sch.get(b).name_hint for b in blocks]
    if stmts.count("row_sums_int8_part") != 1 or stmts.count("row_sums_int8") != 1:
        return None
    i_part, i_sums = stmts.index("row_sums_int8_part"), stmts.index("row_sums_int8")
    if i_sums != i_part + 1:
        return None
    for blk in blocks[:i_part]:
        sch.compute_inline(blk)  # the operand's producers (squeeze, ...) read in place
    part, sums, epilogue = blocks[i_part], blocks[i_sums], blocks[i_sums + 1:]
    *lead, rows, one, v = sch.get_loops(sums)
    outer = sch.fuse(*lead, rows, one)
    size = 1
    for lp in sch.get_loops(part):
        size *= _int(sch.get(lp).extent) or 1
    if cfg.threads > 1 and size >= PARALLEL_MIN_BYTES:
        sch.parallel(outer)
    sch.compute_at(part, outer)
    inner = sch.get_loops(part)[1:]
    if len(inner) == 2:  # (lane, k/lanes): the reduction outside, the lanes one vector add
        lane, ko = inner
        sch.reorder(ko, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(part, ko)
        sch.vectorize(sch.get_loops(init)[-1])
    for blk in epilogue:
        sch.reverse_compute_at(blk, outer)
    return sch, "row-sums-int8"
