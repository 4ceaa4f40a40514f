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


class RecallStream:
  """Rows of `length` tokens (a multiple of the segment): context, then one question segment.
  The pairs sit `depth_segments` segments before the question (None: uniform at random, 2 .. n-1
  back). The context is made chunk by chunk (`context(a, b)`), never held whole: a stream of
  1M tokens costs no RAM beyond the chunk being ingested."""

  CHUNK = 4096   # filler is drawn per row and per chunk of this many tokens: same at any slicing

  def __init__(self, task, length: int, batch: int, seed: int, *, depth_segments=None):
    s = self.s = task.segment_len
    n = length // s
    assert n * s == length and n >= 3, f"length {length}: at least 3 segments of {s}"
    self.task, self.batch, self.seed, self.length = task, batch, seed, length
    self.context_len = (n - 1) * s
    rng = np.random.default_rng([seed, length])
    exs = [task.example_at("eval", seed, i) for i in range(batch)]
    self.distance = np.array([int(depth_segments) if depth_segments else int(rng.integers(2, n))
                              for _ in range(batch)])
    assert ((2 <= self.distance) & (self.distance <= n - 1)).all(), "depth out of the stream"
    self.at = (n - 1 - self.distance) * s
    # The pair segment and one token more: inputs are tokens[:-1], so the last pair's value is
    # the first input of the next segment.
    self.pairs = np.stack([e["inputs"][:s + 1] for e in exs]).astype(np.int32)
    st = lambda key: np.stack([e[key][-s:] for e in exs]).astype(np.int32)
    self.question, self.targets, self.answer = st("inputs"), st("targets"), st("answer")

  def context(self, a: int, b: int) -> np.ndarray:
    """Context tokens [a, b) of every row: B x (b - a) int32."""
    c, k = self.task.c, self.CHUNK
    out = np.empty((self.batch, b - a), np.int32)
    for row in range(self.batch):
      parts = [self.task.filler0 + np.random.default_rng([self.seed, self.length, row, j])
               .integers(0, c.num_filler, k) for j in range(a // k, (b - 1) // k + 1)]
      out[row] = np.concatenate(parts)[a - a // k * k:][:b - a]
      lo, hi = max(a, self.at[row]), min(b, self.at[row] + self.s + 1)
      if lo < hi:
        out[row, lo - a:hi - a] = self.pairs[row, lo - self.at[row]:hi - self.at[row]]
    return out


def recall_stream(task, length, batch, seed, *, depth_segments=None) -> RecallStream:
  return RecallStream(task, length, batch, seed, depth_segments=depth_segments)


def accuracy(task, logits, rows: RecallStream) -> float:
  correct, count = losses.answer_accuracy(logits, jnp.asarray(rows.targets),
                                          jnp.asarray(rows.answer), task.max_answers)
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


def evaluate(model: ThenModel, params, task, rows: RecallStream, directory: str, *, top_k: int,
             span: int = 2, candidates: int = 64, l2_blocks: int, exact: bool = False,
             log=None) -> dict:
  """Ingests the stream's context into L1 + tiers under `directory`, then answers the question
  with each memory mode. -> accuracies, ingest tokens/s, RSS."""
  b, total = rows.batch, rows.context_len
  m = model.m
  tiers = Tiers(directory, batch=b, layers=m.layers, kv_heads=m.kv_heads,
                head_dim=m.dim // m.heads, block=model.writes_per_segment, l2_blocks=l2_blocks)
  run = Tiered(model, params, tiers, top_k=top_k, span=span, candidates=candidates)
  state = model.init_state(b)
  chunk = run.chunk_segments * model.segment_len
  step = max(1, total // 10 // chunk) * chunk   # ~10 progress lines, whole scan chunks
  for width in {min(chunk, total), total % chunk} - {0}:   # compile outside the timed ingest
    jax.block_until_ready(run._chunk(params, state, jnp.zeros((b, width), jnp.int32)))
  rss0 = current_rss_mb()
  t0 = time.perf_counter()
  for a in range(0, total, step):
    state = run.ingest(state, rows.context(a, min(a + step, total)), exact=exact)
    if log:
      el, done = time.perf_counter() - t0, min(a + step, total)
      log(f"  ingested {done:>9,} tokens/row  {b * done / el:>9,.0f} "
          f"tok/s  RSS {current_rss_mb():7.0f} MB  "
          f"L3 {tiers.n_l3 * tiers.block_bytes * b / 2**20:7.1f} MB")
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  q = rows.question
  out = {"ingest_seconds": seconds, "ingest_tokens_per_s": b * total / seconds,
         "tokens_per_row": total, "rows": b, "blocks": tiers.n_blocks,
         "l3_bytes": tiers.n_l3 * tiers.block_bytes * b, "tier_ram_bytes": tiers.nbytes_ram(),
         "rss_before_mb": rss0, "device_state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
         "host_seconds_in_flight": run.host_seconds, "host_wait_seconds": run.wait_seconds}
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


def measure_overlap(model: ThenModel, params, task, rows: RecallStream, directory: str, *,
                    segments: int, top_k: int, span: int = 2, candidates: int = 64,
                    l2_blocks: int) -> dict:
  """The stepwise path (one jitted step per segment, the window retrieved on the host) over the
  first `segments` segments of the context, with the host work overlapping the step in flight
  and without (each step waited for first). -> wall seconds of both and the host seconds."""
  out = {}
  b, s = rows.batch, model.segment_len
  tokens = rows.context(0, segments * s)
  for overlap in (False, True, False, True):   # twice each: the first of each compiles
    d = f"{directory}-{int(overlap)}"
    m = model.m
    tiers = Tiers(d, batch=b, layers=m.layers, kv_heads=m.kv_heads, head_dim=m.dim // m.heads,
                  block=model.writes_per_segment, l2_blocks=l2_blocks)
    run = Tiered(model, params, tiers, top_k=top_k, span=span, candidates=candidates,
                 overlap=overlap)
    t0 = time.perf_counter()
    jax.block_until_ready(run.run(model.init_state(b), tokens))
    key = "overlap" if overlap else "serial"
    out[f"{key}_seconds"] = time.perf_counter() - t0
    out[f"{key}_host_in_flight_seconds"] = run.host_seconds
    out[f"{key}_wait_seconds"] = run.wait_seconds
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(d, ignore_errors=True)
  out["segments"], out["rows"] = segments, b
  return out
