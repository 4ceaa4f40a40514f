"""Recall over long streams through THEN's tiered memory, and the yardstick's modes on it.

A stream row: filler segments, the recall task's pair segment at some depth, more filler, and
the question segment last (the multi-pair recall of memjax.data.recall.AssocRecall, made long).
`evaluate` ingests the context into L1 + tiers and answers the question with each memory:

  tiers     L1 plus the top-k blocks retrieved from L2/L3
  l1_only   the same L1, the tiers never read
  zeroed    the whole memory emptied (L1 state zeroed, no block retrieved): memory_lib.zeroed
  shuffled  the whole memory rolled by one row across the batch (L1 state and the tier row each
            batch row reads): memory_lib.shuffled's convention
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from memjax.core import losses
from memjax.core import memory as memory_lib
from memjax.then.model import ThenModel
from memjax.then.tiered import Tiered
from memjax.then.tiers import Tiers


def recall_stream(task, length: int, batch: int, seed: int, *, depth_segments=None):
  """Rows of `length` tokens (a multiple of the segment): context then one question segment.
  depth_segments: how many segments before the question the pairs sit (None: uniform at random
  over the context). -> dict(context BxT-S, question BxS, targets, answer, distance B)."""
  s = task.segment_len
  n = length // s
  assert n * s == length and n >= 3, f"length {length}: at least 3 segments of {s}"
  rng = np.random.default_rng([seed, length])
  ctx, q, tg, ans, dist = [], [], [], [], []
  for i in range(batch):
    ex = task.example_at("eval", seed, i)
    d = int(depth_segments) if depth_segments else int(rng.integers(2, n))  # 2 .. n-1 back
    assert 2 <= d <= n - 1, f"depth {d} segments in a stream of {n}"
    c = task.filler0 + rng.integers(0, task.c.num_filler, (n - 1) * s)
    at = (n - 1 - d) * s
    # The pair segment and one token more: inputs are tokens[:-1], so the last pair's value is
    # the first input of the next segment.
    c[at:at + s + 1] = ex["inputs"][:s + 1]
    ctx.append(c)
    q.append(ex["inputs"][-s:])
    tg.append(ex["targets"][-s:])
    ans.append(ex["answer"][-s:])
    dist.append(d)
  st = lambda xs: np.stack(xs).astype(np.int32)
  return dict(context=st(ctx), question=st(q), targets=st(tg), answer=st(ans),
              distance=np.array(dist))


def accuracy(task, logits, rows) -> float:
  correct, count = losses.answer_accuracy(logits, jnp.asarray(rows["targets"]),
                                          jnp.asarray(rows["answer"]), task.max_answers)
  return float(correct / jnp.maximum(count, 1.0))


def rss_mb() -> float:
  """Peak resident memory of this process so far (MB)."""
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def evaluate(model: ThenModel, params, task, rows, directory: str, *, top_k: int,
             l2_blocks: int, exact: bool = False, log=None) -> dict:
  """Ingests `rows["context"]` into L1 + tiers under `directory`, then answers the question
  with each memory mode. -> accuracies, ingest tokens/s, RSS."""
  b, total = rows["context"].shape
  m = model.m
  tiers = Tiers(directory, batch=b, layers=m.layers, kv_heads=m.kv_heads,
                head_dim=m.dim // m.heads, block=model.writes_per_segment, l2_blocks=l2_blocks)
  run = Tiered(model, params, tiers, top_k=top_k)
  state = model.init_state(b)
  rss0 = current_rss_mb()
  t0 = time.perf_counter()
  step = max(run.chunk_segments * model.segment_len, total // 10 // model.segment_len
             * model.segment_len)
  for a in range(0, total, step):
    state = run.ingest(state, rows["context"][:, a:a + step], exact=exact)
    if log:
      el, done = time.perf_counter() - t0, min(a + step, total)
      log(f"  ingested {done:>9,} tokens/row  {b * done / el:>9,.0f} "
          f"tok/s  RSS {current_rss_mb():7.0f} MB  L3 {tiers.n_l3 * tiers.block_bytes * b / 2**20:7.1f} MB")
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  q = rows["question"]
  out = {"ingest_seconds": seconds, "ingest_tokens_per_s": b * total / seconds,
         "tokens_per_row": total, "rows": b, "blocks": tiers.n_blocks,
         "l3_bytes": tiers.n_l3 * tiers.block_bytes * b, "tier_ram_bytes": tiers.nbytes_ram(),
         "rss_before_mb": rss0}
  t1 = time.perf_counter()
  logits, _ = run.query(state, q, incognito=True)
  out["query_seconds"] = time.perf_counter() - t1
  out["accuracy_tiers"] = accuracy(task, logits, rows)
  logits, _ = run.query(state, q, incognito=True, use_tiers=False)
  out["accuracy_l1_only"] = accuracy(task, logits, rows)
  logits, _ = run.query(memory_lib.zeroed(state), q, incognito=True, use_tiers=False)
  out["accuracy_memory_zeroed"] = accuracy(task, logits, rows)
  perm = np.roll(np.arange(b), 1)   # row i reads row i-1's memory: memory_lib.shuffled
  logits, _ = run.query(memory_lib.shuffled(state), q, incognito=True, rows=perm)
  out["accuracy_memory_shuffled"] = accuracy(task, logits, rows)
  out["chance"] = task.chance
  out["peak_rss_mb"] = rss_mb()
  out["rss_after_mb"] = current_rss_mb()
  return out
