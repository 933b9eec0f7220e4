"""Graph rewrite: erf, tanh, exp and softmax to TVM's vectorisable approximations on CPU targets.

LLVM has no vector erf or exp, so `relax.erf` (the exact GELU of BERT-style models), `relax.exp` and
softmax lower to one libm call per element: in BERT-mini the GELU kernels alone took 14% of the
model's time. `topi.fast_erf`, `fast_tanh`, `fast_exp` and `nn.fast_softmax` are polynomial /
rational approximations (float32 error about 1e-7) made of multiplies and adds that vectorise.
Compiles still verify against onnxruntime, so an approximation that mattered would fail the build.
"""

from __future__ import annotations


def fast_math_pass():
    """A module pass replacing float32 erf / tanh / exp / softmax by their topi fast_* counterparts."""
    from tvm import relax, topi
    from tvm.relax import expr_functor

    elementwise = {"relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh, "relax.exp": topi.fast_exp}

    @expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", None)
            if op not in elementwise and op != "relax.nn.softmax":
                return call
            # float16/bfloat16 keep the exact op: the approximations are written for float32
            if str(getattr(call.args[0].ty, "dtype", "")) != "float32":
                return call
            if op == "relax.nn.softmax":
                return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))
            return self.builder_.call_te(elementwise[op], call.args[0])

    from .relax_passes import mutator_pass

    return mutator_pass(_Rewriter, "AutoglmFastMath")
