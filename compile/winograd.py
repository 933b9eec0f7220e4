"""Winograd F(m x m, 3 x 3) for stride-1 3x3 fp32 convolutions in the blocked NCHW[x]c layout.

A 3x3 conv computes each m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplies per
channel pair instead of 9 m^2 (2.25x fewer for m = 2, 4x for m = 4):

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (. elementwise; Lavin & Gray, 2015)

`legalize_conv2d` (compile/layout.py) hands the eligible convs (groups 1, 3x3, stride 1, dilation 1,
constant weight, NCHW[b]c data and OIHW[b]i[b]o kernel, the shapes `winograd_tile` picks) to
`legalize_winograd`, which transforms the weight here at compile time (U = G g G^T, numpy, float64) and
emits one TE compute, fused by FuseOps with the conv's epilogue like the direct conv and scheduled by
`compile/schedules/winograd.py`:

- `winograd_input`: the alpha^2 points (B^T d B)[e] of each input tile, a multi-output compute (one part
  per point, e = a * alpha + b), stacked into V[e, icb, n, ty, tx, ici] by `winograd_stack`;
- `winograd_gemm`: M[e, ocb, n, ty, tx, oci] = sum_ic V[e, ic, tile] U[e, ic, oc]: alpha^2 batched GEMMs,
  the channel reduction, where the time goes;
- `winograd_tile`: the m^2 outputs (A^T M A)[i, j] of each tile, again one part each, interleaved into the
  conv's output [n, ocb, y, x, oci] by `winograd_output`; the epilogue (bias, activation, residual add)
  follows in registers.

The transforms are written out term by term (no multiply by 0, +-1 as an add or subtract), the row sums
of the separable halves as identical subexpressions that LLVM computes once per tile.

`AUTOGLM_NO_WINOGRAD=1` turns it off (every conv stays the direct NCHW[x]c conv); `AUTOGLM_WINOGRAD_TILE=2`
or `4` forces F(2x2) or F(4x4) wherever the conv is eligible (benchmarks, tests).
"""

from __future__ import annotations

import os
from fractions import Fraction as F

import numpy as np

NO_WINOGRAD_ENV = "AUTOGLM_NO_WINOGRAD"  # "1": no Winograd convs (the direct NCHW[x]c conv everywhere)

# (B^T, G, A^T) for F(2x2, 3x3) and F(4x4, 3x3): Toom-Cook at the points 0, +-1 (m = 2) and 0, +-1, 1/2, -2
# (m = 4), plus the point at infinity; exact fractions, so G g G^T is exact in float64. For m = 4 the usual
# 0, +-1, +-2 (Lavin & Gray's matrices) had twice the float32 error: random convs (8..48 channels, forced
# F(4x4), 16 models) had a median max error of 2.3e-6 of the output peak with them, 1.2e-6 with these (the
# direct conv: 0.2-0.5e-6); their input transform has 26 nonzero terms instead of 22 (56x56x64: +0..8%).
_MATRICES: dict[int, tuple[list[list[F]], list[list[F]], list[list[F]]]] = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [F(1, 2), F(1, 2), F(1, 2)], [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[1, F(-3, 2), -2, F(3, 2), 1, 0], [0, -1, F(1, 2), F(5, 2), 1, 0], [0, 1, F(-5, 2), F(1, 2), 1, 0],
         [0, -2, -1, 2, 1, 0], [0, F(1, 2), -1, F(-1, 2), 1, 0], [0, 1, F(-3, 2), -2, F(3, 2), 1]],
        [[1, 0, 0], [F(1, 3), F(1, 3), F(1, 3)], [F(-1, 3), F(1, 3), F(-1, 3)],
         [F(-16, 15), F(-8, 15), F(-4, 15)], [F(1, 15), F(-2, 15), F(4, 15)], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, F(1, 2), -2, 0], [0, 1, 1, F(1, 4), 4, 0], [0, 1, -1, F(1, 8), -8, 1]],
    ),
}


def winograd_disabled() -> bool:
    """Whether AUTOGLM_NO_WINOGRAD turns the Winograd convs off."""
    return os.environ.get(NO_WINOGRAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def transform_weight(kernel: np.ndarray, m: int) -> np.ndarray:
    """The blocked conv weight [OCB, ICB, 3, 3, ib, ob] as U[e, OCB, ICB, ib, ob] = (G g G^T)[e]."""
    ocb, icb, kh, kw, ib, ob = kernel.shape
    assert (kh, kw) == (3, 3), kernel.shape
    g = np.asarray(_MATRICES[m][1], dtype=np.float64)                       # [alpha, 3]
    u = np.einsum("ak,OIklio,bl->abOIio", g, kernel.astype(np.float64), g)  # [alpha, alpha, OCB, ICB, ib, ob]
    alpha = m + 2
    return np.ascontiguousarray(u.reshape(alpha * alpha, ocb, icb, ib, ob), dtype=np.float32)


def _combine(coeffs, terms):
    """sum_k coeffs[k] * terms[k] with the zero terms left out and +-1 as an add or subtract."""
    from tvm import tirx

    out = None
    pairs = [(c, t) for c, t in zip(coeffs, terms) if c != 0]
    pairs.sort(key=lambda p: p[0] != 1)  # start from a +1 term where there is one: no negation
    for c, t in pairs:
        if out is None:
            out = t if c == 1 else (-t if c == -1 else t * tirx.const(float(c), "float32"))
        elif c == 1:
            out = out + t
        elif c == -1:
            out = out - t
        else:
            out = out + t * tirx.const(float(c), "float32")
    return out


def _select(index, values):
    """values[index] as a chain of `if_then_else` on the scalar `index`; the lowering folds it once the schedule
    unrolls `index`. (A `Select` is vectorised with its condition, and TVM's simplifier leaves
    `Select(Broadcast(True), a, b)` standing.) Only ever over single loads: the unrolled copies of a chain
    over whole transform expressions cost LLVM 128 s for ResNet18 at F(4x4)."""
    from tvm import tirx

    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.if_then_else(index == k, values[k], out)
    return out


def _transform_2d(left, right, patch):
    """[left @ patch @ right^T] as alpha x alpha (or m x m) expressions, the row sums shared:
    out[a][b] = sum_l right[b][l] * (sum_k left[a][k] * patch[k][l])."""
    rows = [[_combine(row, [patch[k][l] for k in range(len(patch))]) for l in range(len(patch[0]))] for row in left]
    return [[_combine(col, rows[a]) for col in right] for a in range(len(left))]


def conv2d_winograd_nchwc(data, kernel_u, padding, m: int):
    """The Winograd F(m x m, 3 x 3) conv of NCHW[ib]c `data` [N, ICB, H, W, ib] with the transformed weight
    `kernel_u` [alpha^2, OCB, ICB, ib, ob] (`transform_weight`), stride 1, dilation 1; out NCHW[ob]c."""
    from tvm import te, tirx, topi

    n, icb_n, h, w, ib = (int(d) for d in data.shape)
    e_n, ocb_n, _, _, ob = (int(d) for d in kernel_u.shape)
    alpha = m + 2
    assert e_n == alpha * alpha, kernel_u.shape
    bt, _, at = _MATRICES[m]
    pt, pl, pb, pr = padding
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    # padded so that every tile's (m + 2) x (m + 2) window is inside: the last tile row/column may reach past
    # the conv's own padding (its extra outputs are never stored)
    eb, er = th * m + 2 - h - pt, tw * m + 2 - w - pl
    padded = topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, eb, er, 0], 0.0, name="pad_nchwc") \
        if any((pt, pl, eb, er)) else data

    # The transforms are multi-output computes (TE makes a block of each part; the schedule merges their loops
    # back into one): all alpha^2 (m^2) values of a tile, each expression once. (As one tensor with a select
    # over the transformed index, the unrolled select put every expression into every copy: 128 s of codegen
    # for ResNet18 at F(4x4).) The parts are stacked (V) and interleaved (Y) by selects of single loads.
    def input_tile(c, b, ty, tx, i):
        patch = [[padded[b, c, ty * m + k, tx * m + l, i] for l in range(alpha)] for k in range(alpha)]
        v = _transform_2d(bt, bt, patch)
        return [v[a][bb] for a in range(alpha) for bb in range(alpha)]

    parts = te.compute((icb_n, n, th, tw, ib), input_tile, name="winograd_input")
    vt = te.compute((e_n, icb_n, n, th, tw, ib),
                    lambda e, c, b, ty, tx, i: _select(e, [p[c, b, ty, tx, i] for p in parts]), name="winograd_stack")
    icb = te.reduce_axis((0, icb_n), "icb")
    ici = te.reduce_axis((0, ib), "ici")
    mt = te.compute(
        (e_n, ocb_n, n, th, tw, ob),
        lambda e, o, b, ty, tx, oi: te.sum(vt[e, icb, b, ty, tx, ici] * kernel_u[e, o, icb, ici, oi], axis=[icb, ici]),
        name="winograd_gemm")

    def output_tile(b, o, ty, tx, oi):
        tile = [[mt[a * alpha + bb, o, b, ty, tx, oi] for bb in range(alpha)] for a in range(alpha)]
        y = _transform_2d(at, at, tile)
        return [y[i][j] for i in range(m) for j in range(m)]

    tiles = te.compute((n, ocb_n, th, tw, ob), output_tile, name="winograd_tile")

    def output_pixel(b, o, y, x, oi):
        ty, tx, i, j = tirx.floordiv(y, m), tirx.floordiv(x, m), tirx.floormod(y, m), tirx.floormod(x, m)
        return _select(i, [_select(j, [tiles[r * m + c][b, o, ty, tx, oi] for c in range(m)]) for r in range(m)])

    return te.compute((n, ocb_n, oh, ow, ob), output_pixel, name="winograd_output")


def _constant_weight(bb, expr) -> np.ndarray | None:
    """The value of a conv's weight when it is a constant (directly or through a binding), else None."""
    import tvm
    from tvm import relax

    seen = 0
    while isinstance(expr, relax.Var) and seen < 4:
        bound = bb.lookup_binding(expr)
        if bound is None:
            return None
        expr, seen = bound, seen + 1
    if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


# Which convs take which tile, from the conv kernels timed alone (1 thread, Zen 5, interleaved; the direct
# NCHW[x]c conv vs F(2x2) vs F(4x4), in the AVX-512 build and the x86-64-avx2 build on the same core):
# - F(4x4): 2.3-3.7x the direct conv at 28x28..112x112 (8..256 channels), 1.5-1.7x F(2x2). At 14x14 (16 of
#   its tiles, a third of them padding) even with F(2x2) on AVX-512 (-6%..+9%, for 2.25x its weights) and
#   25-30% ahead of it on AVX2; at 7x7 (4 tiles) behind it. With 512 channels (38 MB of weights, more than the
#   L3) 2x behind F(2x2) at 14x14: its weights come from memory.
# - F(2x2): 1.3-2.3x the direct conv wherever it has 16 tiles (7x7 and up), 512 channels at 7x7 included
#   (17 MB of weights: 0.75-1.1 vs 1.2-1.4 ms). With fewer tiles its weights, 16/9 of the direct conv's, are
#   reused too few times (not measured below 7x7: left to the direct conv).
# - 3 input channels (an RGB stem read as one block): F(2x2) 10-20% slower than the direct conv, F(4x4) 15%
#   faster; a K=3 GEMM is mostly overhead, so these stay direct (at least one 8-channel block).
# The output block `ob` is the vector width (16: AVX-512, 8: AVX2, 4: NEON).
MIN_TILES = {4: {16: 32}, 2: {}}   # F(m) needs this many tiles (by vector width; default 16)
MAX_WEIGHT_BYTES = {4: 16 << 20, 2: 32 << 20}
MIN_CHANNELS = 8
FORCE_TILE_ENV = "AUTOGLM_WINOGRAD_TILE"  # "2" / "4": every eligible conv takes F(m x m) (benchmarks, tests)


def winograd_tile(cin: int, cout: int, oh: int, ow: int, batch: int = 1, lanes: int = 8) -> int | None:
    """m of the F(m x m, 3 x 3) a stride-1 3x3 conv takes, or None for the direct conv (see above)."""
    if cin < MIN_CHANNELS or cout < MIN_CHANNELS:
        return None
    forced = os.environ.get(FORCE_TILE_ENV, "").strip()
    if forced in ("2", "4"):
        return int(forced)
    for m in (4, 2):
        tiles = batch * -(-oh // m) * -(-ow // m)
        if tiles >= MIN_TILES[m].get(lanes, 16) and (m + 2) ** 2 * cin * cout * 4 <= MAX_WEIGHT_BYTES[m]:
            return m
    return None


def legalize_winograd(bb, call):
    """The Winograd form of a blocked fp32 3x3 stride-1 conv2d with a constant weight (a `call_te` of
    `conv2d_winograd_nchwc` with the weight transformed here), or None where the conv does not take it."""
    from tvm import relax

    attrs = call.attrs
    data, weight = call.args
    if winograd_disabled() or int(attrs.groups) != 1 or len(data.ty.shape) != 5 or len(weight.ty.shape) != 6:
        return None
    if [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    out_dtype = str(attrs.out_dtype)
    if str(data.ty.dtype) != "float32" or str(weight.ty.dtype) != "float32" \
            or out_dtype not in ("", "void", "None", "float32"):
        return None
    try:
        ocb, icb, kh, kw, ib, ob = (int(d) for d in weight.ty.shape)
        n, _, h, w, _ = (int(d) for d in data.ty.shape)
    except (TypeError, ValueError):
        return None
    padding = [int(p) for p in attrs.padding]
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if (kh, kw) != (3, 3) or layouts != (f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"):
        return None
    oh, ow = h + padding[0] + padding[2] - 2, w + padding[1] + padding[3] - 2
    m = winograd_tile(icb * ib, ocb * ob, oh, ow, n, ob)
    if m is None:
        return None
    kernel = _constant_weight(bb, weight)
    if kernel is None:
        return None
    u = relax.const(transform_weight(kernel, m), "float32")
    return bb.call_te(conv2d_winograd_nchwc, data, u, padding, m, primfunc_name_hint="conv2d_winograd_nchwc")
