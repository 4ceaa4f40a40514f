"""HRSA-TRM ingest cost: O(N) chunked local encoder vs dense, compile time vs denoise steps.

  python experiments/bench_hrsa.py
  python experiments/bench_hrsa.py --lengths=2048,4096 --dense_max=4096   # quicker

Prints encoder forward time at each length for chunked local attention (window `chunk`
+ `halo`) on each local backend (`auto` is what the model runs: on CPU the all-at-once
reference for small inputs, the blocked reference past memjax.layers.local_attention.
BLOCKED_ABOVE_BYTES) and for dense attention under the same mask, the 16k/2k
(last/first) ratios, and the lower+compile time of ingest (encoder + diffusion cascade,
forward and gradient) for T=2 and T=8 denoise steps.
"""
import dataclasses
import time

from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from memjax.core import cli
from memjax.hrsa.model import HRSAConfig
from memjax.hrsa.model import HRSATRM

_LENGTHS = flags.DEFINE_list("lengths", ["2048", "4096", "8192", "16384"], "Input lengths.")
_BACKENDS = flags.DEFINE_list("backends", ["auto", "reference", "blocked"],
                              "Local attention backends to time (memjax.layers.local_attention).")
_DENSE_MAX = flags.DEFINE_integer("dense_max", 16384, "Longest length for the dense baseline.")
_DIM = flags.DEFINE_integer("dim", 64, "Model width.")
_HEADS = flags.DEFINE_integer("heads", 1, "Encoder heads.")
_CHUNK = flags.DEFINE_integer("chunk", 256, "Local attention chunk (window).")
_HALO = flags.DEFINE_integer("halo", 256, "Local attention halo.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per point (best is reported).")
_STEPS = flags.DEFINE_list("denoise_steps", ["2", "8"], "Denoise steps for the compile timing.")


def _time(fn, *args):
  jax.block_until_ready(fn(*args))   # compile + warm
  best = float("inf")
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main(argv):
  del argv
  lengths = cli.int_list("lengths", _LENGTHS.value)
  denoise_steps = cli.int_list("denoise_steps", _STEPS.value)
  backends = list(_BACKENDS.value)
  cfg = HRSAConfig(vocab_size=256, dim=_DIM.value, heads=_HEADS.value, enc_layers=1,
                   enc_chunk=_CHUNK.value, enc_halo=_HALO.value, max_context=max(lengths),
                   slots=(4, 8, 16), denoise_steps=2)
  encoders = {}
  for b in backends:   # same weights (same seed), one encoder per local backend
    g, p = nnx.split(HRSATRM(dataclasses.replace(cfg, attention_backend=b),
                             rngs=nnx.Rngs(0)), nnx.Param)
    encoders[b] = (jax.jit(lambda p, d, dense, g=g: nnx.merge(g, p).encoder(d, dense=dense),
                           static_argnums=2), p)
  print(f"backend {jax.default_backend()}, devices {jax.device_count()}, dim {cfg.dim}, "
        f"heads {cfg.heads}, chunk {cfg.enc_chunk}, halo {cfg.enc_halo}, batch 1")
  print(f"{'tokens':>8} " + " ".join(f"{b + ' ms':>13}" for b in backends) + f" {'dense ms':>10}")
  local, dense = {b: {} for b in backends}, {}
  for n in lengths:
    doc = jax.random.randint(jax.random.key(n), (1, n), 0, cfg.vocab_size)
    for b, (enc, p) in encoders.items():
      local[b][n] = _time(enc, p, doc, False)
    if n <= _DENSE_MAX.value:
      enc, p = encoders[backends[0]]
      dense[n] = _time(enc, p, doc, True)
    d = f"{dense[n] * 1e3:10.1f}" if n in dense else f"{'-':>10}"
    print(f"{n:>8} " + " ".join(f"{local[b][n] * 1e3:13.1f}" for b in backends) + f" {d}",
          flush=True)
  lo, hi = lengths[0], lengths[-1]
  for b in backends:
    print(f"local ({b}) ratio {hi}/{lo}: {local[b][hi] / local[b][lo]:.2f} "
          f"(length ratio {hi / lo:.0f})")
  if lo in dense and hi in dense:
    print(f"dense ratio {hi}/{lo}: {dense[hi] / dense[lo]:.2f}")

  compile_s = {}
  for t in denoise_steps:
    c = HRSAConfig(**{**cfg.__dict__, "denoise_steps": t})
    gt, pt = nnx.split(HRSATRM(c, rngs=nnx.Rngs(0)), nnx.Param)
    doc = jnp.zeros((2, lengths[0]), jnp.int32)

    def ingest_loss(p, doc, gt=gt):
      memory, _ = nnx.merge(gt, p).ingest(doc, jax.random.key(0))
      return sum(jnp.sum(m ** 2) for m in memory.levels)

    start = time.perf_counter()
    jax.jit(jax.value_and_grad(ingest_loss)).lower(pt, doc).compile()
    compile_s[t] = time.perf_counter() - start
    print(f"compile ingest (forward + grad), T={t} denoise steps: {compile_s[t]:.2f} s", flush=True)
  ts = sorted(compile_s)
  print(f"compile ratio T={ts[-1]}/T={ts[0]}: {compile_s[ts[-1]] / compile_s[ts[0]]:.2f}")


if __name__ == "__main__":
  cli.run(main)
