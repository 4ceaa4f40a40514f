"""What grows faster than N in HRSA-TRM's encoder: the forward's XLA ops at a short and a long
input (jax.profiler traces, memjax.core.profiling), matched by op family, with each family's
time ratio long/short beside the length ratio.

  python experiments/profile_encoder.py                          # 2048 vs 16384 tokens
  python experiments/profile_encoder.py --lengths=2048,8192 --top=20

The encoder as experiments/bench_hrsa.py times it (dim 64, 1 head, chunk 256, halo 256, batch
1, the `auto` local backend). The long input can take other code paths than the short one
(blocked attention and token-blocked MLP past their thresholds): families present at one
length only are listed with a ratio of "-".
"""
import collections

import jax
from absl import flags
from flax import nnx

from memjax.core import cli
from memjax.core import profiling
from memjax.hrsa.model import HRSAConfig
from memjax.hrsa.model import HRSATRM

_LENGTHS = flags.DEFINE_list("lengths", ["2048", "16384"], "The short and the long input.")
_CALLS = flags.DEFINE_integer("calls", 10, "Profiled calls at the short length (fewer, by "
                              "the length ratio, at the long one; at least 3).")
_TOP = flags.DEFINE_integer("top", 25, "Largest families (at the long length) to list.")


def main(argv):
  del argv
  short, long = cli.int_list("lengths", _LENGTHS.value)
  cfg = HRSAConfig(vocab_size=256, dim=64, heads=1, enc_layers=1, enc_chunk=256, enc_halo=256,
                   max_context=long, slots=(4, 8, 16), denoise_steps=2)
  g, p = nnx.split(HRSATRM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  enc = jax.jit(lambda p, d: nnx.merge(g, p).encoder(d, dense=False))
  fams, totals = {}, {}
  for n in (short, long):
    doc = jax.random.randint(jax.random.key(n), (1, n), 0, cfg.vocab_size)
    hlo = enc.lower(p, doc).compile().as_text()
    calls = max(3, _CALLS.value * short // n)
    ops = profiling.op_times(lambda doc=doc: enc(p, doc), hlo, calls=calls)
    fams[n] = collections.Counter()
    for o in ops:
      fams[n][profiling.family(o)] += o.ms
    totals[n] = profiling.by_kind(ops)
  print(f"encoder forward, XLA op time per call, {short} vs {long} tokens "
        f"(length ratio {long / short:.0f})")
  for k in sorted(set(totals[short]) | set(totals[long]), key=lambda k: -totals[long][k]):
    a, b = totals[short][k], totals[long][k]
    print(f"  {k:40s} {a:8.2f} {b:8.2f} ms  x{b / a:.1f}" if a else f"  {k:40s} {a:8.2f} "
          f"{b:8.2f} ms  -")
  a, b = sum(totals[short].values()), sum(totals[long].values())
  print(f"  {'all ops':40s} {a:8.2f} {b:8.2f} ms  x{b / a:.1f}")
  print(f"largest {_TOP.value} op families at {long} tokens (name | JAX op), ms per call:")
  for f, ms in fams[long].most_common(_TOP.value):
    a = fams[short].get(f, 0.0)
    print(f"  {f[:72]:72s} {a:7.2f} {ms:7.2f}  " + (f"x{ms / a:.1f}" if a else "-"))


if __name__ == "__main__":
  cli.run(main)
