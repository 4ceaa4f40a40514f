"""THEN's host and disk tiers: L2 host RAM and L3 memory-mapped disk, with direct addressing.

L1 is the on-device ring buffer the model attends over (memjax.then.traces). The traces a
segment's write overwrites in L1 (`ThenModel.step` returns them, oldest first) come here as
one block per segment:

  L2  host RAM (numpy), the newest `l2_blocks` blocks, a ring;
  L3  one append-only file per batch row, `<directory>/l3-<row>.bin`, read through np.memmap;
      a block leaves L2 for L3 when L2 is full, so L3 holds blocks 0 .. n_l3-1 in order.

Every block keeps a summary in RAM: the elementwise max and min of its first-layer keys per kv
head (float16, rounded outward), so q+ . max + q- . min bounds from above the dot product of a
query q with any key of the block (the page bound of Quest, Tang et al. 2024). Addressing
(`Scorer`): each first-layer query's bound on every block, z-scored over the blocks; a block's
score is the best query's z per head, summed over heads. The best `candidates` blocks by that
score are then read whole (L2 or L3) and ranked exactly (`rerank`: the largest dot product of a
query with any of the block's keys), and the top-k of those are read back into a retrieval
window. Not learned; measured on the trained then_recall model in BUILD_NOTES.md (the block
mean key, tried first, missed the pair block on main's 256-key model). k large enough to fetch
every block gives exactly the traces L1 evicted (the equivalence tests).

The tiers hold numpy arrays and files: they live outside jit. The whole batch advances in
lockstep (every row stores the same number of blocks); a row's traces are read only by that row
(`rows` permutes which row's tiers a batch row reads: the yardstick's shuffled memory).

`save()` writes L2, summaries and counters to `<directory>/tiers.npz` atomically (temporary,
fsync, rename, fsync of the directory); `Tiers.open(directory, ...)` restores them, checks the
dims and the L3 files, and drops bytes an interrupted append left past the saved end.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from memjax.core.config import ConfigError

STATE = "tiers.npz"
TMP_PREFIX = ".tmp-"


class TierError(ConfigError):
  """A missing, damaged or mismatched tier file: one line, exit 2."""


def fsync_dir(path: str) -> None:
  """Makes a rename or a new file in `path` durable (the directory entry itself)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class _Paged:
  """A B x n x ... array that grows by fixed pages of PAGE blocks: never copied as it grows
  (a doubling array would hold old and new copies at once, and the allocator keeps them)."""

  PAGE = 1024

  def __init__(self, batch: int, shape: tuple, dtype):
    self.batch, self.shape, self.dtype = batch, shape, dtype
    self.pages: list[np.ndarray] = []

  def __setitem__(self, j: int, value) -> None:
    p, o = divmod(j, self.PAGE)
    while len(self.pages) <= p:
      self.pages.append(np.zeros((self.batch, self.PAGE) + self.shape, self.dtype))
    self.pages[p][:, o] = value

  def at(self, row: int, j: int):
    p, o = divmod(j, self.PAGE)
    return self.pages[p][row, o]

  def take(self, ids) -> np.ndarray:
    """B x len(ids) x ...; a run of consecutive ids inside one page is a view."""
    ids = np.asarray(ids, int)
    run = ids.size and ids[-1] - ids[0] == ids.size - 1
    if run and ids[0] // self.PAGE == ids[-1] // self.PAGE:
      p = ids[0] // self.PAGE
      return self.pages[p][:, ids[0] - p * self.PAGE: ids[-1] - p * self.PAGE + 1]
    out = np.empty((self.batch, ids.size) + self.shape, self.dtype)
    for i, j in enumerate(ids):
      p, o = divmod(int(j), self.PAGE)
      out[:, i] = self.pages[p][:, o]
    return out

  def upto(self, n: int) -> np.ndarray:
    if not n:
      return np.zeros((self.batch, 0) + self.shape, self.dtype)
    return np.concatenate(self.pages, 1)[:, :n]

  def load(self, arr: np.ndarray) -> None:
    self.pages = []
    for j0 in range(0, arr.shape[1], self.PAGE):
      page = np.zeros((self.batch, self.PAGE) + self.shape, self.dtype)
      part = arr[:, j0:j0 + self.PAGE]
      page[:, :part.shape[1]] = part
      self.pages.append(page)

  @property
  def nbytes(self) -> int:
    return sum(p.nbytes for p in self.pages)


SCORE_CHUNK = 1024   # blocks scored at a time: bounded memory however long the stream


class Scorer:
  """Block scores for one segment's queries: each query's bound on each block (`Tiers.dots`) is
  z-scored over the blocks; a block's score is the best query's z per head, summed over heads.
  A query that picks out one block (a key asked about) gives it a z far above what any query
  gives a block by chance, however many blocks there are.

  Two passes over the blocks in chunks of SCORE_CHUNK (the per-query mean and spread, then the
  z maxima), so memory stays bounded; `add` takes the blocks in any number of calls (the first
  while the device computes, the last one after the step that evicted it)."""

  def __init__(self, tiers: "Tiers", q_BxSxHxD, rows=None):
    self.t, self.q, self.rows = tiers, q_BxSxHxD, rows
    self.n = 0
    self.sum = self.sumsq = 0.0

  def add(self, upto: int) -> "Scorer":
    """Accumulates the statistics of blocks [n, upto)."""
    for a in range(self.n, upto, SCORE_CHUNK):
      d = self.t.dots(self.q, np.arange(a, min(upto, a + SCORE_CHUNK)), self.rows)
      self.sum = self.sum + d.sum(1, dtype=np.float64)
      self.sumsq = self.sumsq + (d.astype(np.float64) ** 2).sum(1)
    self.n = max(self.n, upto)
    return self

  def scores(self) -> np.ndarray:
    """B x n: the scores of the blocks added."""
    b = self.q.shape[0]
    if self.n == 0:
      return np.zeros((b, 0), np.float32)
    mean = self.sum / self.n
    sd = np.sqrt(np.maximum(self.sumsq / self.n - mean ** 2, 0.0))
    one = self.n < 2   # a single block: no spread to scale by
    out = np.empty((b, self.n), np.float32)
    for a in range(0, self.n, SCORE_CHUNK):
      d = self.t.dots(self.q, np.arange(a, min(self.n, a + SCORE_CHUNK)), self.rows)
      z = d if one else (d - mean[:, None]) / (sd[:, None] + 1e-6)
      out[:, a:a + d.shape[1]] = z.max(2).sum(-1)
    return out


class Tiers:
  """L2 (RAM) and L3 (disk) traces of a batch of B streams, blocks of `block` traces."""

  def __init__(self, directory: str, *, batch: int, layers: int, kv_heads: int, head_dim: int,
               block: int, l2_blocks: int, dtype=np.float32):
    if l2_blocks < 1 or block < 1:
      raise TierError(f"tiers: block={block} and l2_blocks={l2_blocks} must be >= 1")
    self.dir = directory   # created on the first write: reading an empty memory writes nothing
    if os.path.isdir(directory):
      for f in os.listdir(directory):
        if f.startswith(TMP_PREFIX):   # a save a kill interrupted
          os.remove(os.path.join(directory, f))
    self.batch, self.layers, self.kv_heads, self.head_dim = batch, layers, kv_heads, head_dim
    self.block, self.l2_blocks, self.dtype = block, l2_blocks, np.dtype(dtype)
    self.block_shape = (layers, block, kv_heads, head_dim)
    self.block_bytes = 2 * int(np.prod(self.block_shape)) * self.dtype.itemsize   # keys, values
    self.l2_k = np.zeros((batch, l2_blocks) + self.block_shape, self.dtype)
    self.l2_v = np.zeros_like(self.l2_k)
    self.n_blocks = 0
    # per block, in RAM: elementwise max and min of its first-layer keys per kv head (float16,
    # rounded outward, so q . k <= bound still holds)
    self._summary = _Paged(batch, (2, kv_heads, head_dim), np.float16)
    self._valid = _Paged(batch, (block,), bool)
    self._maps: list = [None] * batch
    self.extra: dict = {}   # arrays saved with the tiers (`save(extra=...)`)

  # -- layout -------------------------------------------------------------------------------

  @property
  def n_l3(self) -> int:
    return max(0, self.n_blocks - self.l2_blocks)

  def l3_path(self, row: int) -> str:
    return os.path.join(self.dir, f"l3-{row}.bin")

  def nbytes_ram(self) -> int:
    return self.l2_k.nbytes + self.l2_v.nbytes + self._summary.nbytes + self._valid.nbytes

  # -- writing ------------------------------------------------------------------------------

  def append(self, keys_BxLxNxKxD, values_BxLxNxKxD, valid_BxN) -> bool:
    """Stores one block of evicted traces (N <= block; fewer are padded with invalid slots) for
    every row; a block with no valid trace in any row (L1 not yet full) is not stored.
    -> whether a block was stored."""
    valid_BxN = np.asarray(valid_BxN, bool)
    if not valid_BxN.any():
      return False
    k = np.asarray(keys_BxLxNxKxD, self.dtype)
    v = np.asarray(values_BxLxNxKxD, self.dtype)
    n = valid_BxN.shape[1]
    if n < self.block and k.shape[2] == n:   # a short segment evicted fewer: pad, invalid
      pad = [(0, 0), (0, 0), (0, self.block - n), (0, 0), (0, 0)]
      k, v = np.pad(k, pad), np.pad(v, pad)
      valid_BxN = np.pad(valid_BxN, [(0, 0), (0, self.block - n)])
    if k.shape != (self.batch,) + self.block_shape or v.shape != k.shape:
      raise TierError(f"tiers: a block is {list(k.shape)}, these tiers hold "
                      f"{[self.batch] + list(self.block_shape)}")
    j = self.n_blocks
    slot = j % self.l2_blocks
    if j >= self.l2_blocks:   # L2 full: its oldest block (j - l2_blocks) goes to L3, in order
      self._write_l3(slot)
    self.l2_k[:, slot], self.l2_v[:, slot] = k, v
    w = valid_BxN[:, :, None, None]
    hi = np.where(w, k[:, 0], -np.inf).max(1).astype(np.float32)   # B x K x D, valid traces only
    lo = np.where(w, k[:, 0], np.inf).min(1).astype(np.float32)
    hi16, lo16 = hi.astype(np.float16), lo.astype(np.float16)
    hi16 = np.where(hi16.astype(np.float32) < hi, np.nextafter(hi16, np.float16(np.inf)), hi16)
    lo16 = np.where(lo16.astype(np.float32) > lo, np.nextafter(lo16, np.float16(-np.inf)), lo16)
    self._summary[j] = np.stack([hi16, lo16], 1)
    self._valid[j] = valid_BxN
    self.n_blocks = j + 1
    return True

  def _write_l3(self, slot: int) -> None:
    os.makedirs(self.dir, exist_ok=True)
    for row in range(self.batch):
      with open(self.l3_path(row), "ab") as f:
        f.write(self.l2_k[row, slot].tobytes())
        f.write(self.l2_v[row, slot].tobytes())

  # -- reading ------------------------------------------------------------------------------

  def _l3_block(self, row: int, j: int):
    m = self._maps[row]
    if m is None or m.shape[0] <= j:   # the file grew since it was mapped
      m = self._maps[row] = np.memmap(self.l3_path(row), self.dtype, mode="r",
                                      shape=(self.n_l3, 2) + self.block_shape)
    return m[j, 0], m[j, 1]

  def unmap(self) -> None:
    """Drops the L3 mappings: the pages a retrieval read stop counting as resident memory."""
    self._maps = [None] * self.batch

  def read_block(self, row: int, j: int):
    """(keys LxNxKxD, values, valid N) of block j of a row, from L2 or L3."""
    if not 0 <= j < self.n_blocks:
      raise IndexError(f"block {j} of {self.n_blocks}")
    if j >= self.n_l3:
      slot = j % self.l2_blocks
      return self.l2_k[row, slot], self.l2_v[row, slot], self._valid.at(row, j)
    k, v = self._l3_block(row, j)
    return k, v, self._valid.at(row, j)

  def scores(self, q_BxSxHxD, rows=None) -> np.ndarray:
    """B x n_blocks: how strongly the segment's queries address each block (`Scorer`)."""
    return Scorer(self, q_BxSxHxD, rows).add(self.n_blocks).scores()

  def dots(self, q_BxSxHxD, ids, rows=None) -> np.ndarray:
    """B x len(ids) x S x H: for each query, an upper bound of its dot product with any
    first-layer key of each block: sum_d max(q_d hi_d, q_d lo_d) = q+ . hi + q- . lo, with hi
    and lo the block's elementwise max and min keys (its kv head's)."""
    q = np.asarray(q_BxSxHxD, np.float32)
    b, s, h, d = q.shape
    q = q.reshape(b, s, self.kv_heads, h // self.kv_heads, d)
    summ = self._summary.take(ids).astype(np.float32)   # B x M x 2 x K x D
    if rows is not None:
      summ = summ[np.asarray(rows)]
    bound = (np.einsum("bskgd,bnkd->bnskg", np.maximum(q, 0), summ[:, :, 0])
             + np.einsum("bskgd,bnkd->bnskg", np.minimum(q, 0), summ[:, :, 1]))
    return bound.reshape(b, len(ids), s, h)

  def rerank(self, q_BxSxHxD, ids, rows=None) -> np.ndarray:
    """B x M: exact scores of candidate blocks ids[row] (M each), read whole from L2/L3: per
    head, the largest dot product of any query with any valid first-layer key of the block,
    summed over heads (top-k by key similarity)."""
    q = np.asarray(q_BxSxHxD, np.float32)
    b, s, h, d = q.shape
    q = q.reshape(b, s, self.kv_heads, h // self.kv_heads, d)
    out = np.full((b, max((len(x) for x in ids), default=0)), -np.inf, np.float32)
    for row in range(b):
      src = row if rows is None else int(rows[row])
      if not len(ids[row]):
        continue
      k, ok = self.read_keys(src, ids[row])                        # M x L x N x K x D, M x N
      dots = np.einsum("skgd,mnkd->mnskg", q[row], k[:, 0])
      dots = np.where(ok[:, :, None, None, None], dots, -np.inf)    # valid traces only
      out[row, :len(ids[row])] = dots.max((1, 2)).sum((1, 2))
    return out

  def read_keys(self, row: int, ids):
    """(keys M x L x N x K x D, valid M x N) of blocks `ids` of a row: one read per tier."""
    k, _, ok = self.read_blocks(row, ids, values=False)
    return k, ok

  def read_blocks(self, row: int, ids, *, values: bool = True):
    """(keys M x L x N x K x D, values or None, valid M x N) of blocks `ids` of a row."""
    ids = np.asarray(ids, int)
    parts = (0, 1) if values else (0,)
    out = [np.empty((ids.size,) + self.block_shape, self.dtype) for _ in parts]
    in_l3 = ids < self.n_l3
    if in_l3.any():
      self._l3_block(row, int(ids[in_l3].max()))   # maps the file far enough
      for o, p in zip(out, parts):
        o[in_l3] = self._maps[row][ids[in_l3], p]
    if (~in_l3).any():
      slots = ids[~in_l3] % self.l2_blocks
      for o, l2 in zip(out, (self.l2_k, self.l2_v)):
        o[~in_l3] = l2[row, slots]
    return out[0], (out[1] if values else None), self._valid.take(ids)[row]

  def gather(self, ids_BxK, width: int, rows=None):
    """Direct addressing: the window (keys BxLxRxKxD, values, valid BxR) holding, per row, the
    blocks ids_BxK[row] (of tier row rows[row]), padded with invalid slots to `width` blocks."""
    r = width * self.block
    keys = np.zeros((self.batch, self.layers, r, self.kv_heads, self.head_dim), self.dtype)
    values = np.zeros_like(keys)
    valid = np.zeros((self.batch, r), bool)
    for b in range(self.batch):
      src = b if rows is None else int(rows[b])
      m = len(ids_BxK[b])
      if not m:
        continue
      k, v, ok = self.read_blocks(src, ids_BxK[b])   # M x L x N x K x D: blocks side by side
      sl = slice(0, m * self.block)
      keys[b, :, sl] = k.transpose(1, 0, 2, 3, 4).reshape(self.layers, -1, *k.shape[3:])
      values[b, :, sl] = v.transpose(1, 0, 2, 3, 4).reshape(self.layers, -1, *v.shape[3:])
      valid[b, sl] = ok.reshape(-1)
    return keys, values, valid

  # -- persistence --------------------------------------------------------------------------

  def meta(self) -> np.ndarray:
    return np.array([self.batch, self.layers, self.kv_heads, self.head_dim, self.block,
                     self.l2_blocks], np.int64)

  def save(self, extra: dict | None = None) -> str:
    """L2, summaries, validity and counters to tiers.npz, atomically (L3 is on disk already).
    `extra` arrays (a user's L1 state, its model identity) go into the same file, so the file
    and what it names change together; `Tiers.open` returns them as `.extra`."""
    for row in range(self.batch):   # L3 appends reach the disk before the state names them
      if self.n_l3:
        with open(self.l3_path(row), "rb+") as f:
          os.fsync(f.fileno())
    os.makedirs(self.dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=TMP_PREFIX)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, meta=self.meta(), dtype=np.array(self.dtype.str), n_blocks=self.n_blocks,
                 l2_k=self.l2_k, l2_v=self.l2_v, summary=self._summary.upto(self.n_blocks),
                 valid=self._valid.upto(self.n_blocks),
                 **{f"x_{k}": np.asarray(v) for k, v in (extra or {}).items()})
        f.flush()
        os.fsync(f.fileno())
      path = os.path.join(self.dir, STATE)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    fsync_dir(self.dir)
    return path

  @classmethod
  def open(cls, directory: str, **dims) -> "Tiers":
    """The tiers saved in `directory`, for these dims (batch, layers, kv_heads, head_dim,
    block, l2_blocks); empty tiers when nothing was saved there yet."""
    t = cls(directory, **dims)
    path = os.path.join(directory, STATE)
    if not os.path.exists(path):
      if os.path.isdir(directory) and any(f.startswith("l3-") for f in os.listdir(directory)):
        raise TierError(f"{directory}: L3 files without {STATE}: not tiers this code saved")
      return t
    try:
      with np.load(path) as f:
        meta, dtype, n = f["meta"], str(f["dtype"]), int(f["n_blocks"])
        l2_k, l2_v, summ, valid = f["l2_k"], f["l2_v"], f["summary"], f["valid"]
        extra = {k[2:]: f[k] for k in f.files if k.startswith("x_")}
    except Exception as e:  # a damaged zip, a missing key: say which file
      raise TierError(f"{path}: unreadable tier file ({type(e).__name__})") from None
    if meta.tolist() != t.meta().tolist() or dtype != t.dtype.str:
      raise TierError(f"{path}: written for dims {meta.tolist()} {dtype}, these tiers are "
                      f"{t.meta().tolist()} {t.dtype.str} (batch, layers, kv_heads, head_dim, "
                      f"block, l2_blocks)")
    if (l2_k.shape != t.l2_k.shape or l2_v.shape != t.l2_k.shape
        or summ.shape != (t.batch, n, 2, t.kv_heads, t.head_dim)
        or valid.shape != (t.batch, n, t.block)):
      raise TierError(f"{path}: its arrays do not match its dims")
    t.n_blocks = n
    want = t.n_l3 * t.block_bytes
    for row in range(t.batch):
      p = t.l3_path(row)
      have = os.path.getsize(p) if os.path.exists(p) else 0
      if have < want:
        raise TierError(f"{p}: {have} bytes, the saved tiers need {want} (missing or truncated)")
      if have > want:   # an append after the last save (a kill before the next): not ours yet
        with open(p, "rb+") as f:
          f.truncate(want)
    t.l2_k[...], t.l2_v[...] = l2_k, l2_v
    t._summary.load(summ)
    t._valid.load(valid)
    t.extra = extra
    return t
