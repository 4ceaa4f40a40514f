"""A trained THEN model over tiered memory: L1 on the device, L2/L3 on the host (tiers.Tiers).

  run = Tiered(model, params, tiers, top_k=8)
  state = run.ingest(state, tokens_BxT)                 # constant device memory, any length
  logits, state = run.query(state, question_BxS)        # L1 + the top-k blocks, one softmax

The device part is `ThenModel.step` (pure, jitted once): state and the retrieved window in,
logits, state and the evicted traces out. The segment loop here is a Python loop because each
segment's window is read from host RAM / disk (numpy, np.memmap), which jit cannot do; the
ingest fast path (`exact=False`) scans many segments in one jitted call and moves their
evictions to the tiers afterwards (exact for one-layer models, see `ThenModel.ingest_chunk`).

Overlap: jax dispatches a step asynchronously, so while segment i computes, the host chooses
segment i+1's candidates among the blocks already stored and reranks them (both stages); after
the step, only the block segment i evicted is reranked (it is always a candidate), the top-k
taken and the window gathered. (Without the rerank, candidates <= top_k, the first scoring
pass overlaps and the second follows the step.) `host_seconds` counts the host work done
while a step was in flight, `wait_seconds` the time blocked on the device.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from memjax.then.model import ThenModel, ThenState, Window
from memjax.then import tiers as tiers_lib
from memjax.then.tiers import Tiers


class Tiered:
  def __init__(self, model: ThenModel, params, tiers: Tiers, *, top_k: int, span: int = 2,
               candidates: int = 64, chunk_segments: int = 64, overlap: bool = True):
    """top_k blocks are chosen by score; each comes with the span-1 blocks written after it
    (the token shift carries a segment's last tokens into the next segment's first traces:
    the trace that pairs a block's last token with the next one lives in the next block), so a
    window holds top_k * span blocks. The top_k are the best by `Tiers.rerank` among the
    `candidates` best by the summaries (`Tiers.scores`); candidates <= top_k skips the rerank."""
    if tiers.block != model.writes_per_segment:
      raise ValueError(f"tiers.block={tiers.block}, the model writes {model.writes_per_segment} "
                       "traces per segment")
    self.model, self.params, self.tiers, self.top_k, self.span = model, params, tiers, top_k, span
    self.chunk_segments, self.candidates = chunk_segments, candidates
    self.overlap = overlap   # False: wait for each step before any host work (to measure)
    jitted = model.__dict__.setdefault("_tiered_jit", {})   # one compile per model, not per run
    for name in ("step", "ingest_chunk", "address"):
      if name not in jitted:
        jitted[name] = jax.jit(getattr(model, name))
    self._step, self._chunk, self._address = (jitted["step"], jitted["ingest_chunk"],
                                              jitted["address"])
    self.host_seconds = 0.0   # host work done while a step was in flight
    self.wait_seconds = 0.0   # host blocked on the device

  def empty_window(self, batch: int) -> Window:
    t, r = self.tiers, self.top_k * self.span * self.tiers.block
    z = jnp.zeros((batch, t.layers, r, t.kv_heads, t.head_dim), jnp.float32)
    return Window(z, z, jnp.zeros((batch, r), bool))

  def ingest(self, state: ThenState, tokens_BxT, *, exact: bool = False) -> ThenState:
    """Writes a stream into L1; what L1 evicts goes to L2, then L3. exact=False: chunks of
    `chunk_segments` segments scanned on the device, reading L1 only; exact=True: one step per
    segment with retrieval (the reference for models whose traces depend on what they read)."""
    if exact:
      return self.run(state, tokens_BxT)[1]
    s = self.model.segment_len
    n = tokens_BxT.shape[1] // s
    assert n * s == tokens_BxT.shape[1], "a whole number of segments"
    for a in range(0, n, self.chunk_segments):
      part = jnp.asarray(tokens_BxT[:, a * s:min(n, a + self.chunk_segments) * s])
      state, (k, v, valid) = self._chunk(self.params, state, part)
      k, v, valid = jax.device_get((k, v, valid))   # waits for the chunk: host I/O follows
      for i in range(k.shape[0]):
        self.tiers.append(k[i], v[i], valid[i])
    return state

  def run(self, state: ThenState, tokens_BxT, *, use_tiers: bool = True, rows=None,
          keep: bool = True):
    """Segment by segment: each reads L1 plus the top-k blocks of L2/L3 for its own queries.
    -> (logits BxTxV, state). use_tiers=False: L1 only. rows: which tier row each batch row
    reads (a permutation: the shuffled memory). keep=False: evictions are not stored."""
    s, t = self.model.segment_len, self.tiers
    b, total = tokens_BxT.shape
    n = -(-total // s)   # the last segment may be short
    tokens_BxT = jnp.asarray(tokens_BxT)
    q = np.asarray(self._address(self.params, state.shift_BxWxD, tokens_BxT))
    window = (self._window(q[:, :s], rows) if use_tiers else self.empty_window(b))
    logits = []
    for i in range(n):
      out, state, evicted = self._step(self.params, state, window, tokens_BxT[:, i * s:(i + 1) * s])
      logits.append(out)
      if not self.overlap:
        jax.block_until_ready((out, state, evicted))
      last = i + 1 == n
      h0 = time.perf_counter()
      if use_tiers and not last:   # overlaps with the step in flight
        q_next = q[:, (i + 1) * s:(i + 2) * s]
        n_old = t.n_blocks
        if self.candidates > self.top_k:   # both stages over the blocks already stored
          cand, exact = self._candidates(q_next, rows)
        else:
          scorer = tiers_lib.Scorer(t, q_next, rows).add(n_old)
      h1 = time.perf_counter()
      if keep:
        stored = t.append(*jax.device_get(evicted))
      else:
        jax.block_until_ready(out)
        stored = False
      h2 = time.perf_counter()
      if use_tiers and not last and self.candidates > self.top_k:
        if stored:   # the block this step evicted is always a candidate: rerank it alone
          cand = np.concatenate([cand, np.full((b, 1), n_old)], 1)
          exact = np.concatenate([exact, t.rerank(q_next, cand[:, -1:], rows)], 1)
        k = min(self.top_k, cand.shape[1])
        top = (np.take_along_axis(cand, np.argpartition(-exact, k - 1, axis=1)[:, :k], 1) if k
               else cand[:, :0])
        window = self._fetch(top, t.n_blocks, rows)
      elif use_tiers and not last:
        # only the block this step evicted is left to add; then the z maxima (second pass)
        window = self._window(q_next, rows, scorer.add(t.n_blocks).scores())
      elif not last:
        window = self.empty_window(b)
      self.host_seconds += h1 - h0
      self.wait_seconds += h2 - h1
    t.unmap()
    return jnp.concatenate(logits, 1), state

  def _window(self, q, rows, scores=None) -> Window:
    t = self.tiers
    if scores is None:
      scores = t.scores(q, rows)
    n = scores.shape[1]
    k = min(self.top_k, n)
    top = (np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else np.zeros((q.shape[0], 0), int))
    m = min(self.candidates, n)
    if m > k:   # read the candidates whole and keep the top_k by exact key similarity
      cand = np.argpartition(-scores, m - 1, axis=1)[:, :m]
      exact = t.rerank(q, cand, rows)
      top = np.take_along_axis(cand, np.argpartition(-exact, k - 1, axis=1)[:, :k], 1)
    return self._fetch(top, n, rows)

  def _candidates(self, q, rows):
    """(candidates B x M, their exact scores B x M): the `candidates` best stored blocks by
    summary, reranked (all of them when there are at most that many)."""
    t = self.tiers
    n = t.n_blocks
    m = min(self.candidates, n)
    if not m:
      return np.zeros((q.shape[0], 0), int), np.zeros((q.shape[0], 0), np.float32)
    cand = (np.argpartition(-t.scores(q, rows), m - 1, axis=1)[:, :m] if m < n
            else np.broadcast_to(np.arange(n), (q.shape[0], n)).copy())
    return cand, t.rerank(q, cand, rows)

  def _fetch(self, top, n: int, rows) -> Window:
    t = self.tiers
    ids = []
    for row in top:   # each chosen block and the span-1 after it, once, oldest first
      ids.append(sorted({j + i for j in row for i in range(self.span) if j + i < n}))
    width = self.top_k * self.span
    return Window(*map(jnp.asarray, t.gather(ids, width, rows)))

  def query(self, state: ThenState, tokens_BxS, *, incognito: bool = False, **kw):
    """-> (logits, state); incognito: the state returned unchanged and nothing stored."""
    logits, new = self.run(state, tokens_BxS, keep=not incognito, **kw)
    return logits, (state if incognito else new)
