"""Pallas local attention == the jnp reference, forward and all three gradients.

LocalAttentionTest runs the compiled kernel (skipped without a GPU);
LocalAttentionInterpretTest runs the same tests in Pallas interpret mode (CPU, CI).

Every kernel run happens under `kernel.poisoned_outputs()`: each output buffer
(out, log-sum-exp, dq, dk, dv) is a NaN-filled input aliased to the output, so an
element the kernel never writes stays NaN and fails the comparison.
"""
import unittest

import hypothesis
from hypothesis import strategies as st
import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from memjax.kernels import local_attention as kernel
from memjax.layers.local_attention import local_attention as layer_local_attention
from memjax.layers.local_attention import local_attention_reference

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)   # 2**-7 (spacing at 1.0)
# No shrinking: one interpret-mode example costs seconds; the failing example is printed.
_PHASES = (hypothesis.Phase.explicit, hypothesis.Phase.generate)
F32_TOL = 1e-5                                  # relative to the largest reference magnitude


@st.composite
def problems(draw):
  """A shape, window and tiling: lengths off the block grid, windows of every size."""
  kv_heads, group = draw(st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 2), (1, 3)]))
  return dict(
      batch=draw(st.integers(1, 2)),
      length=draw(st.integers(1, 80)),
      heads=kv_heads * group,
      kv_heads=kv_heads,
      head_dim=draw(st.sampled_from([16, 32])),
      chunk=draw(st.integers(1, 48)),
      halo=draw(st.integers(0, 64)),
      block_sizes=kernel.BlockSizes(*(draw(st.sampled_from([16, 32])) for _ in range(4))),
      scale=draw(st.sampled_from([None, 0.3])),
      seed=draw(st.integers(0, 2**16)),
  )


def _inputs(p, dtype):
  kq, kk, kv, kd = jax.random.split(jax.random.key(p["seed"]), 4)
  q = jax.random.normal(kq, (p["batch"], p["length"], p["heads"], p["head_dim"]), jnp.float32)
  k = jax.random.normal(kk, (p["batch"], p["length"], p["kv_heads"], p["head_dim"]), jnp.float32)
  v = jax.random.normal(kv, (p["batch"], p["length"], p["kv_heads"], p["head_dim"]), jnp.float32)
  do = jax.random.normal(kd, q.shape, jnp.float32)
  return tuple(x.astype(dtype) for x in (q, k, v, do))


def _value_and_grads(fn, q, k, v, do):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(do.astype(out.dtype)))


def _compile_and_run(fn, *args, fast_compile: bool):
  """jit; in interpret mode on CPU, XLA's backend optimisation off (halves compile time, the
  tests' main cost; numerics are float32/bf16 either way)."""
  options = {"xla_backend_optimization_level": 0} if fast_compile else None
  return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def _max_err(a, b):
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


class LocalAttentionTest(unittest.TestCase):
  """Runs the compiled kernel; the interpret subclass runs the same checks on CPU."""
  interpret = False

  def setUp(self):
    super().setUp()
    if not self.interpret and jax.default_backend() != "gpu":
      self.skipTest("compiled Pallas kernel needs a GPU (the interpret subclass runs on CPU)")

  def _kernel_fn(self, p):
    return lambda q, k, v: kernel.local_attention(
        q, k, v, chunk=p["chunk"], halo=p["halo"], scale=p.get("scale"),
        block_sizes=p["block_sizes"], interpret=self.interpret)

  @staticmethod
  def _reference_fn(p):
    return lambda q, k, v: local_attention_reference(q, k, v, chunk=p["chunk"],
                                                     halo=p["halo"], scale=p.get("scale"))

  def _reference_results(self, p, q, k, v, do):
    return _compile_and_run(lambda *a: _value_and_grads(self._reference_fn(p), *a),
                            q, k, v, do, fast_compile=self.interpret)

  def _kernel_results(self, p, q, k, v, do):
    with kernel.poisoned_outputs():
      results = _compile_and_run(lambda *a: _value_and_grads(self._kernel_fn(p), *a),
                                 q, k, v, do, fast_compile=self.interpret)
    for name, x in zip(("out", "dq", "dk", "dv"), results):
      self.assertTrue(bool(jnp.all(jnp.isfinite(x))), f"{name} has unwritten (NaN) elements")
    return results

  def _check_float32(self, p):
    q, k, v, do = _inputs(p, jnp.float32)
    got = self._kernel_results(p, q, k, v, do)
    want = self._reference_results(p, q, k, v, do)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
      self.assertEqual(g.shape, w.shape, name)
      self.assertEqual(g.dtype, jnp.float32, name)
      scale = max(1.0, float(jnp.max(jnp.abs(w))))
      self.assertLessEqual(_max_err(g, w), F32_TOL * scale, f"{name} {p}")
    return got

  @hypothesis.settings(max_examples=5, deadline=None, derandomize=True,
                       suppress_health_check=list(hypothesis.HealthCheck), phases=_PHASES)
  @hypothesis.given(problems())
  def test_float32_forward_and_grads_match_reference(self, p):
    self._check_float32(p)

  @hypothesis.settings(max_examples=2, deadline=None, derandomize=True,
                       suppress_health_check=list(hypothesis.HealthCheck), phases=_PHASES)
  @hypothesis.given(problems())
  def test_bfloat16_forward_and_grads_match_float32_reference(self, p):
    """bf16 inputs, f32 accumulation, against the f32 reference on the upcast inputs.

    Tolerance from the dtype: the kernel may be off the f32 truth by at most twice
    what the jnp reference itself is off when it runs on the same bf16 inputs, plus
    one bf16 spacing of the largest magnitude (for tensors where that error is ~0).
    """
    q, k, v, do = _inputs(p, jnp.bfloat16)
    got = self._kernel_results(p, q, k, v, do)
    up = lambda *a: tuple(x.astype(jnp.float32) for x in a)
    want = self._reference_results(p, *up(q, k, v, do))
    ref_bf16 = self._reference_results(p, q, k, v, do)
    for name, g, w, r in zip(("out", "dq", "dk", "dv"), got, want, ref_bf16):
      self.assertEqual(g.dtype, jnp.bfloat16, name)
      tol = 2 * _max_err(r, w) + BF16_EPS * float(jnp.max(jnp.abs(w)))
      self.assertLessEqual(_max_err(g, w), tol, f"{name} {p}")

  def test_length_off_block_grid_gqa_and_large_halo(self):
    # T = 75 is no multiple of 32 or 16; halo spans several chunks; 3 query heads per kv head.
    self._check_float32(dict(batch=2, length=75, heads=6, kv_heads=2, head_dim=32, chunk=10,
                             halo=37, block_sizes=kernel.BlockSizes(32, 16, 16, 32), seed=1))

  def test_chunk_one_and_halo_zero(self):
    # chunk=1, halo=0: every query sees only itself, so out == v.
    p = dict(batch=1, length=40, heads=2, kv_heads=2, head_dim=16, chunk=1, halo=0,
             block_sizes=kernel.BlockSizes(16, 16, 16, 16), seed=2)
    out = self._check_float32(p)[0]
    np.testing.assert_allclose(out, _inputs(p, jnp.float32)[2], rtol=0, atol=1e-6)

  def test_poisoning_exposes_an_unwritten_block(self):
    """The poisoning the other tests rely on: a kernel that skips blocks leaves NaN there."""
    cfg = kernel._Config(chunk=1, halo=0, scale=1.0, block_q=16, block_k=16, block_q_bwd=16,
                         block_k_bwd=16, t_pad=64, num_warps=4, num_stages=1,
                         interpret=self.interpret, poison=True)

    def writes_first_block_only(x_ref, o_ref):
      @pl.when(pl.program_id(0) == 0)
      def _():
        o_ref[...] = x_ref[...]

    spec = pl.BlockSpec((16, 16), lambda i: (i, 0))
    x = jnp.ones((64, 16), jnp.float32)
    [out] = kernel._pallas_call(writes_first_block_only, grid=(4,), in_specs=[spec],
                                out_specs=[spec], out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype)],
                                cfg=cfg, name="canary")(x)
    np.testing.assert_array_equal(out[:16], 1.0)
    self.assertTrue(bool(jnp.all(jnp.isnan(out[16:]))))

  def test_bad_input_raises_value_error_naming_the_argument(self):
    q = jnp.zeros((1, 32, 2, 16), jnp.float32)
    kv = jnp.zeros((1, 32, 1, 16), jnp.float32)
    call = lambda q, k, v, **kw: kernel.local_attention(
        q, k, v, **{"chunk": 8, "halo": 8, "interpret": self.interpret, **kw})
    cases = [
        ("head_dim", lambda: call(jnp.zeros((1, 32, 2, 24)), jnp.zeros((1, 32, 1, 24)),
                                  jnp.zeros((1, 32, 1, 24)))),
        ("v_BxTxKxD", lambda: call(q, kv, jnp.zeros((1, 32, 1, 32)))),
        ("q_BxTxHxD", lambda: call(jnp.zeros((1, 16, 2, 16)), kv, kv)),
        ("q_BxTxHxD", lambda: call(jnp.zeros((32, 2, 16)), kv, kv)),
        ("num_kv_heads", lambda: call(jnp.zeros((1, 32, 3, 16)), jnp.zeros((1, 32, 2, 16)),
                                      jnp.zeros((1, 32, 2, 16)))),
        ("dtype", lambda: call(q.astype(jnp.float16), kv.astype(jnp.float16),
                               kv.astype(jnp.float16))),
        ("chunk", lambda: call(q, kv, kv, chunk=0)),
        ("halo", lambda: call(q, kv, kv, halo=-1)),
        ("block_q", lambda: kernel.BlockSizes(block_q=24)),
        ("block_k_bwd", lambda: kernel.BlockSizes(block_k_bwd=8)),
    ]
    for name, fn in cases:
      with self.assertRaisesRegex(ValueError, name):
        fn()


class LocalAttentionInterpretTest(LocalAttentionTest):
  interpret = True

  def test_lowers_to_triton_for_cuda(self):
    """Without a GPU: forward + backward lower through Pallas' Triton backend (3 kernels).

    Checks the kernel bodies use only ops the Triton lowering knows (cross-lowering for
    'cuda' from a CPU jaxlib); compiling the Triton IR to PTX happens only on a GPU.
    """
    q = jax.ShapeDtypeStruct((1, 200, 6, 64), jnp.bfloat16)   # T off the block grid, 3 heads/kv
    k = jax.ShapeDtypeStruct((1, 200, 2, 64), jnp.bfloat16)
    fn = lambda q, k, v: kernel.local_attention(q, k, v, chunk=48, halo=20)
    fwd_bwd = lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)
    text = jax.jit(fwd_bwd).trace(q, k, k, q).lower(lowering_platforms=("cuda",)).as_text()
    self.assertEqual(text.count("xla.gpu.triton"), 3)

  def test_layer_dispatch_pallas_backend(self):
    """memjax.layers.local_attention(backend='pallas') reaches this kernel (interpret on CPU)."""
    if jax.default_backend() != "cpu":
      self.skipTest("dispatch picks interpret mode only on CPU")
    p = dict(batch=1, length=48, heads=2, kv_heads=1, head_dim=16, chunk=12, halo=5, seed=3)
    q, k, v, _ = _inputs(p, jnp.float32)
    run = lambda backend: _compile_and_run(
        lambda q, k, v: layer_local_attention(q, k, v, chunk=12, halo=5, backend=backend),
        q, k, v, fast_compile=True)
    got, want = run("pallas"), run("reference")
    np.testing.assert_allclose(got, want, rtol=0, atol=F32_TOL)


if __name__ == "__main__":
  unittest.main()
