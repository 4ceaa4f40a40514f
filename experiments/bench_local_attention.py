"""Times chunked local attention: Pallas kernel vs jnp reference vs jax.nn.dot_product_attention.

  python experiments/bench_local_attention.py                       # GPU: 4k..32k, D 64/128, bf16
  python experiments/bench_local_attention.py --lengths=512,1024 --head_dims=64 \
      --interpret --matmul_size=1024 --iters=2                     # CPU smoke test

For each length and head dim: forward and forward+backward time (median of --iters
after a compile + warm-up call), achieved useful TFLOP/s, that as a fraction of the
device's bf16 matmul rate measured in the same run, and speedups over the jnp
reference under jit. Useful FLOPs count only visible (query, key) pairs:
forward 4*D per pair per head (QK^T and PV), forward+backward 3.5x that.

Window: the kernel and reference use --chunk/--halo (query i sees keys from
(i // chunk) * chunk - halo to i: between halo + 1 and chunk + halo keys). The
`dpa_window` row is jax.nn.dot_product_attention(is_causal=True,
local_window_size=(chunk + halo - 1, 0)): a sliding window of chunk + halo keys,
the closest built-in; it sees slightly more pairs, and its FLOPs are its own.
"""
import functools
import statistics
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

try:
  from memjax.kernels import local_attention as kernel
except ModuleNotFoundError:  # a plain checkout: kernels/ is memjax.kernels only once installed
  import importlib.util
  import pathlib
  _root = pathlib.Path(__file__).resolve().parents[1]
  sys.path.insert(0, str(_root))
  _spec = importlib.util.spec_from_file_location(
      "memjax.kernels", _root / "kernels" / "__init__.py",
      submodule_search_locations=[str(_root / "kernels")])
  sys.modules["memjax.kernels"] = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(sys.modules["memjax.kernels"])
  from memjax.kernels import local_attention as kernel
from memjax.layers.local_attention import local_attention_reference
from memjax.core import cli

_LENGTHS = flags.DEFINE_list("lengths", ["4096", "8192", "16384", "32768"], "Sequence lengths.")
_HEAD_DIMS = flags.DEFINE_list("head_dims", ["64", "128"], "Head dims.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 8, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 8, "KV heads (divides --heads).")
_CHUNK = flags.DEFINE_integer("chunk", 256, "Query chunk length.")
_HALO = flags.DEFINE_integer("halo", 256, "Halo (keys before the chunk); window = chunk + halo.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Input dtype.")
_IMPLS = flags.DEFINE_list("impls", ["pallas", "reference", "dpa_window"], "What to time.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls per measurement (median reported).")
_MATMUL = flags.DEFINE_integer("matmul_size", 8192, "N of the NxNxN bf16 matmul giving the peak.")
_INTERPRET = flags.DEFINE_boolean("interpret", False, "Pallas interpret mode (CPU smoke test).")
_BLOCK_Q = flags.DEFINE_integer("block_q", 64, "BlockSizes.block_q")
_BLOCK_K = flags.DEFINE_integer("block_k", 64, "BlockSizes.block_k")
_BLOCK_Q_BWD = flags.DEFINE_integer("block_q_bwd", 64, "BlockSizes.block_q_bwd")
_BLOCK_K_BWD = flags.DEFINE_integer("block_k_bwd", 64, "BlockSizes.block_k_bwd")


def median_seconds(fn, *args, iters: int) -> float:
  jax.block_until_ready(fn(*args))   # compile
  jax.block_until_ready(fn(*args))   # warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_tflops(n: int, iters: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
  return 2 * n ** 3 / median_seconds(f, a, b, iters=iters) / 1e12


def visible_pairs(t: int, *, chunk: int | None = None, halo: int = 0, window: int | None = None):
  """(query, key) pairs the mask lets through, per head."""
  i = np.arange(t, dtype=np.int64)
  if window is not None:
    return int(np.minimum(i + 1, window).sum())
  return int((i - np.maximum((i // chunk) * chunk - halo, 0) + 1).sum())


def attention_fns(impl: str, chunk: int, halo: int, block_sizes, interpret: bool):
  """The forward function of one implementation, (q, k, v) -> out."""
  if impl == "pallas":
    fn = functools.partial(kernel.local_attention, chunk=chunk, halo=halo,
                           block_sizes=block_sizes, interpret=interpret)
  elif impl == "reference":
    fn = functools.partial(local_attention_reference, chunk=chunk, halo=halo)
  elif impl == "dpa_window":
    fn = functools.partial(jax.nn.dot_product_attention, is_causal=True,
                           local_window_size=(chunk + halo - 1, 0))
  else:
    raise ValueError(f"--impls: unknown implementation {impl!r}")
  return fn


def measure(impl, t, d, peak, iters, block_sizes=None, parts=("fwd", "fwd_bwd")):
  """One row: `parts` timed for `impl` at length t, head dim d; block sizes from the flags
  unless given (experiments/gpu_check.py sweeps them)."""
  b, h, kh = _BATCH.value, _HEADS.value, _KV_HEADS.value
  dtype = jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(t + d), 4)
  q = jax.random.normal(keys[0], (b, t, h, d), dtype)
  k = jax.random.normal(keys[1], (b, t, kh, d), dtype)
  v = jax.random.normal(keys[2], (b, t, kh, d), dtype)
  do = jax.random.normal(keys[3], (b, t, h, d), dtype)
  if block_sizes is None:
    block_sizes = kernel.BlockSizes(_BLOCK_Q.value, _BLOCK_K.value, _BLOCK_Q_BWD.value,
                                    _BLOCK_K_BWD.value)
  fn = attention_fns(impl, _CHUNK.value, _HALO.value, block_sizes, _INTERPRET.value)
  if impl == "dpa_window":
    pairs = visible_pairs(t, window=_CHUNK.value + _HALO.value)
  else:
    pairs = visible_pairs(t, chunk=_CHUNK.value, halo=_HALO.value)
  fwd_flops = 4 * pairs * d * b * h
  fwd = jax.jit(fn)
  fwd_bwd = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))
  row = {"impl": impl, "T": t, "D": d}
  for name, f, flops in (("fwd", fwd, fwd_flops), ("fwd_bwd", fwd_bwd, 3.5 * fwd_flops)):
    if name not in parts:
      continue
    args = (q, k, v) if name == "fwd" else (q, k, v, do)
    try:
      sec = median_seconds(f, *args, iters=iters)
    except Exception as e:  # pylint: disable=broad-except  (an OOM or unsupported config is a table cell)
      row[name] = None
      row[name + "_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
      continue
    row[name] = sec
    row[name + "_tflops"] = flops / sec / 1e12
    row[name + "_frac"] = row[name + "_tflops"] / peak
  return row


def fmt_table(rows, peak):
  head = (f"{'T':>6} {'D':>4} {'impl':<11} {'fwd ms':>9} {'TFLOP/s':>8} {'%peak':>6} "
          f"{'x ref':>6} {'x dpa':>6} | {'f+b ms':>9} {'TFLOP/s':>8} {'%peak':>6} "
          f"{'x ref':>6} {'x dpa':>6}")
  lines = [f"bf16 matmul rate measured in this run: {peak:.4g} TFLOP/s", head, "-" * len(head)]
  by_key = {(r["T"], r["D"], r["impl"]): r for r in rows}
  for r in rows:
    cells = [f"{r['T']:>6} {r['D']:>4} {r['impl']:<11}"]
    for name in ("fwd", "fwd_bwd"):
      if r.get(name) is None:
        err = r.get(name + "_error", "not run")
        cells.append(f"{err[:44]:>44}")
        continue
      speed = []
      for other in ("reference", "dpa_window"):
        o = by_key.get((r["T"], r["D"], other))
        speed.append(f"{o[name] / r[name]:6.2f}" if o and o.get(name) else f"{'-':>6}")
      cells.append(f"{r[name] * 1e3:9.3f} {r[name + '_tflops']:8.3f} "
                   f"{100 * r[name + '_frac']:5.1f}% {speed[0]} {speed[1]}")
    lines.append(" ".join(cells[:2]) + " | " + cells[2])
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    lengths = [int(x) for x in _LENGTHS.value]
    head_dims = [int(x) for x in _HEAD_DIMS.value]
  except ValueError as e:
    print(f"error: --lengths/--head_dims must be integers: {e}", file=sys.stderr)
    return 2
  if _HEADS.value % _KV_HEADS.value:
    print(f"error: --heads {_HEADS.value} is not a multiple of --kv_heads {_KV_HEADS.value}",
          file=sys.stderr)
    return 2
  for impl in _IMPLS.value:
    if impl not in ("pallas", "reference", "dpa_window"):
      print(f"error: --impls: unknown implementation {impl!r}", file=sys.stderr)
      return 2
  if "pallas" in _IMPLS.value:
    bad = [d for d in head_dims if d not in kernel.SUPPORTED_HEAD_DIMS]
    if bad:
      print(f"error: --head_dims {bad} not supported by the kernel "
            f"(supported: {kernel.SUPPORTED_HEAD_DIMS})", file=sys.stderr)
      return 2
  try:
    kernel.BlockSizes(_BLOCK_Q.value, _BLOCK_K.value, _BLOCK_Q_BWD.value, _BLOCK_K_BWD.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"interpret={_INTERPRET.value}, dtype={_DTYPE.value}, B={_BATCH.value} "
        f"H={_HEADS.value} K={_KV_HEADS.value} chunk={_CHUNK.value} halo={_HALO.value}")
  peak = matmul_tflops(_MATMUL.value, _ITERS.value)
  rows = []
  for t in lengths:
    for d in head_dims:
      for impl in _IMPLS.value:
        rows.append(measure(impl, t, d, peak, _ITERS.value))
        print(f"  done T={t} D={d} {impl}", file=sys.stderr, flush=True)
  print(fmt_table(rows, peak))
  return 0


if __name__ == "__main__":
  cli.run(main)
