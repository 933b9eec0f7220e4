"""Register-tiled schedules for the blocked-layout (NCHW[x]c) convolutions of `compile/layout.py`.

The computes (`compile/layout.py`) name their main block `conv2d_nchwc` or `depthwise_conv2d_nchwc`;
the rule here recognises a fused kernel by that block and schedules it:

- regular / pointwise conv, output `[n, ob, y, x, oi]`, reduction `icb, kh, kw, ici`: accumulator
  tile of `nf` channel blocks x `nx` output pixels (`nf * nx` vector registers, sized from the
  target's register file), the block of `oi` lanes one vector. Per input channel: `nx` broadcasts,
  `nf` weight loads, `nf * nx` FMAs.
- depthwise, output `[n, cb, y, x, ci]`, reduction `kh, kw`: `nx` output pixels x one channel
  block per tile; each tap is one vector load reused over the `nx` pixels; stride 2 reads whole
  channel vectors, so nothing is de-interleaved.

Both keep the accumulators in registers (a local tile), apply the fused epilogue (bias,
activation, residual add) per tile before the single store, and leave the zero padding to a
separate stage (TODO: split borders with loop_partition).
"""

from __future__ import annotations

from .config import TILE_SCOPE, CpuConfig
from .knobs import pick
from .rules import _divisors_le, _int, epilogue_per_tile, split_init

MAIN_BLOCKS = ("conv2d_nchwc", "depthwise_conv2d_nchwc")


def _main_block(sch, root):
    for blk in sch.get_child_blocks(root):
        if sch.get(blk).name_hint in MAIN_BLOCKS:
            return blk
    return None


def conv2d_nchwc(func, cfg: CpuConfig):
    """Schedule a fused NCHW[x]c conv kernel; (schedule, "conv2d-nchwc"/"depthwise-nchwc") or None."""
    from .rules import _prepare, schedule_spatial_block

    names = _block_names(func)
    if not any(n in MAIN_BLOCKS for n in names):
        return None
    prep = _prepare(func)
    if prep is None or not prep.fusable:
        return None
    sch, main = prep.sch, prep.main
    stmt = sch.get(main)
    if stmt.name_hint not in MAIN_BLOCKS:
        return None
    depthwise = stmt.name_hint == "depthwise_conv2d_nchwc"
    ext = [_int(iv.dom.extent) for iv in prep.iters]
    if any(e is None for e in ext) or len(ext) != (7 if depthwise else 9):
        return None
    lanes = ext[4]
    budget = cfg.accumulators
    if cfg.arch != "x86_64":
        # NEON's fmla-by-lane keeps input vectors and weight vectors live beside the tile: at 24 accumulators
        # LLVM spills on aarch64 (checked in tests/test_layout.py), at 16 it does not
        budget = min(budget, 16)

    epilogue = list(prep.epilogue)
    if prep.is_output:
        epilogue = [sch.cache_write(main, 0, TILE_SCOPE)]
    else:
        sch.set_scope(main, 0, TILE_SCOPE)

    loops = sch.get_loops(main)
    if depthwise:
        n_l, c_l, y_l, x_l, v_l, ry, rx = loops
        X = ext[3]
        choices = sorted(_divisors_le(X, min(budget, 8)), reverse=True)
        nx = pick("depthwise.pixels", choices, choices[0])
        xo, xi = sch.split(x_l, factors=[None, nx])
        outer = [n_l, c_l, y_l, xo]
        sch.reorder(*outer, ry, rx, xi, v_l)
        tile = [xi]
        red = [ry, rx]
        kind = "depthwise-nchwc"
    else:
        n_l, f_l, y_l, x_l, v_l, icb, ry, rx, ici = loops
        F, X = ext[1], ext[3]
        scored = []
        pointwise = ext[6] == 1 and ext[7] == 1
        for nf in _divisors_le(F, 4):
            # nf * nx accumulators + nf weight vectors + broadcasts in flight must fit the register file;
            # rows of at most 8 pixels (LLVM keeps several broadcasts live across a longer unrolled row)
            cap = min(X, 8, min(budget, cfg.vector_regs - nf - 3) // nf)
            # partial tiles only for 1x1 convs: in a kxk window the predicate sits on every tap
            for nx in range(1, cap + 1) if pointwise else _divisors_le(X, cap):
                acc = nf * nx
                # a row that does not divide by nx runs a partial last tile (predicated): count its waste. On
                # AVX-512 it costs far more than its idle lanes (tuning MobileNetV2 measured 4x4 tiles on 7-pixel
                # rows 1.3-2.1x slower than 2x7), hence the cube there; on AVX2 (12 accumulators: no 2x7 tile)
                # the cube made MobileNetV2 1% slower, so it stays linear, as on NEON (not measured)
                useful = (X / (-(-X // nx) * nx)) ** (3 if cfg.isa == "x86-avx512" else 1)
                scored.append(((acc / (nf + nx) + 0.001 * acc) * useful, nf, nx))
        if not scored:
            return None
        ranked = [(nf, nx) for _, nf, nx in sorted(scored, key=lambda t: -t[0])]
        nf, nx = pick("conv.tile", ranked[:8], ranked[0])
        fo, fi = sch.split(f_l, factors=[None, nf])
        po, pi = sch.split(x_l, factors=[None, nx])
        spatial_outer = [y_l, po]
        w_bytes = F * lanes * ext[5] * ext[6] * ext[7] * ext[8] * 4
        if pick("conv.weights_inner", [True, False], w_bytes <= cfg.l2_bytes // 2):
            outer = [n_l, *spatial_outer, fo]
        else:
            outer = [n_l, fo, *spatial_outer]
        # ici outside rx: the taps of one row (x + rx) share nx + kw - 1 input broadcasts, as in the NCHW rule
        sch.reorder(*outer, icb, ry, ici, rx, fi, pi, v_l)
        tile = [fi, pi]
        red = [icb, ry, ici, rx]
        kind = "conv2d-nchwc"

    fused = sch.fuse(*outer)
    if cfg.threads > 1 and (_int(sch.get(fused).extent) or 1) > 1:
        sch.parallel(fused)
    if depthwise:
        for lp in red:
            if (_int(sch.get(lp).extent) or 0) <= 7:
                sch.unroll(lp)
    else:
        for lp in (red[1], red[3]):  # the window loops
            if (_int(sch.get(lp).extent) or 0) <= 7:
                sch.unroll(lp)
    for lp in tile:
        sch.unroll(lp)
    sch.vectorize(v_l)

    epilogue_per_tile(sch, epilogue, fused)
    split_init(sch, main, red[0])
    for blk in prep.prologue:
        if depthwise:
            try:
                sch.compute_inline(blk)  # the zero padding read in place: no padded copy
                continue
            except Exception:  # noqa: BLE001 - a stage that cannot inline is scheduled on its own
                pass
        schedule_spatial_block(sch, blk, cfg)
    return sch, kind


def _block_names(func) -> list[str]:
    import tvm_ffi
    from tvm import s_tir

    names: list[str] = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, lambda b: names.append(str(b.name_hint))), order="post")
    return names
