"""Per-user live memory: one frozen THEN model, one memory state per user, on disk.

  store = UserStore(state_dir, model_id)
  state = store.load(user, like=model.init_state(1))    # the user's memory (empty if new)
  state = model.ingest(params, state, tokens)           # remember
  logits, _ = model.query(params, state, q, incognito=True)   # answer; nothing written
  store.save(user, state)                               # atomic: never half a file
  store.wipe(user)                                      # nothing of the user left

Layout: <state_dir>/<user>/state.npz, nothing else of a user's anywhere else. With tiers
(`TieredUsers`, `then_live.py --tiers`): <state_dir>/<user>/tiers.npz holds the L1 state, L2 and
the block summaries in one atomic file, and <state_dir>/<user>/l3-0.bin the append-only L3.
A user id is a name, never a path: 1-64 characters of [A-Za-z0-9_-]. A save writes a
temporary file in the user's own directory, fsyncs it, renames it over state.npz and fsyncs
the directory, so a kill at any point leaves either the old or the new state; temporaries a
kill left behind are removed the next time the store is opened. The file records the tree
structure and the model identity it was written for, and `load` refuses a file of another model
or structure.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from memjax.core.config import ConfigError
from memjax.then.tiers import fsync_dir

TIERS = "tiers.npz"
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
STATE = "state.npz"
TMP_PREFIX = ".tmp-"


class StateError(ConfigError):
  """A user id, state directory or state file a user can fix: one line, exit 2."""


def check_user(user: str) -> str:
  if not isinstance(user, str) or not USER_ID.fullmatch(user):
    raise StateError(f"user: {user!r} is not a user id (1-64 characters of A-Z a-z 0-9 _ -)")
  return user


class UserStore:
  """The state directory of one model's users."""

  def __init__(self, state_dir: str, model_id: str):
    if os.path.exists(state_dir) and not os.path.isdir(state_dir):
      raise StateError(f"state_dir: {state_dir} is not a directory")
    try:
      os.makedirs(state_dir, exist_ok=True)
    except OSError as e:
      raise StateError(f"state_dir: {state_dir}: {e.strerror}") from None
    self.root = os.path.realpath(state_dir)
    self.model_id = model_id
    self.removed_temporaries = self._remove_temporaries()

  def _remove_temporaries(self) -> list[str]:
    gone = []
    for user in self.users():
      d = os.path.join(self.root, user)
      for f in os.listdir(d):
        if f.startswith(TMP_PREFIX):
          os.remove(os.path.join(d, f))
          gone.append(os.path.join(user, f))
    return gone

  def users(self) -> list[str]:
    return sorted(u for u in os.listdir(self.root)
                  if USER_ID.fullmatch(u) and os.path.isdir(os.path.join(self.root, u)))

  def dir(self, user: str) -> str:
    d = os.path.join(self.root, check_user(user))
    assert os.path.dirname(os.path.realpath(d)) == self.root   # a name, never a path
    return d

  def exists(self, user: str) -> bool:
    return os.path.exists(os.path.join(self.dir(user), STATE))

  def save(self, user: str, state) -> str:
    d = self.dir(user)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **self.pack(state))
        f.flush()
        os.fsync(f.fileno())
      path = os.path.join(d, STATE)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    fsync_dir(d)
    return path

  def load(self, user: str, like):
    """The user's state in the structure of `like`; `like` itself for a new user."""
    path = os.path.join(self.dir(user), STATE)
    if not os.path.exists(path):
      return like
    try:
      with np.load(path) as f:
        return self.unpack(path, dict(f.items()), like)
    except StateError:
      raise
    except Exception as e:  # a damaged zip, a missing key: say which file
      raise StateError(f"{path}: unreadable state file ({type(e).__name__})") from None

  def pack(self, state) -> dict:
    """The arrays a state file holds: the leaves, the tree structure, the model identity."""
    leaves, treedef = jax.tree.flatten(state)
    return dict(treedef=np.array(str(treedef)), model_id=np.array(self.model_id),
                **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})

  def unpack(self, path: str, arrays: dict, like):
    """`pack`'s arrays back into the structure of `like`, checked (one line naming `path`)."""
    leaves, treedef = jax.tree.flatten(like)
    try:
      stored_tree, stored_model = str(arrays["treedef"]), str(arrays["model_id"])
      got = ([np.asarray(arrays[f"leaf{i}"]) for i in range(len(leaves))]
             if stored_tree == str(treedef) else None)
    except KeyError as e:
      raise StateError(f"{path}: not a state file (no {e.args[0]!r})") from None
    if stored_model != self.model_id:
      raise StateError(f"{path}: written for model {stored_model!r}, this is {self.model_id!r}")
    if got is None:
      raise StateError(f"{path}: its tree structure is not this model's memory state")
    for i, (a, b) in enumerate(zip(got, leaves)):
      if a.shape != b.shape or a.dtype != b.dtype:
        raise StateError(f"{path}: leaf {i} is {a.dtype}{list(a.shape)}, the model expects "
                         f"{b.dtype}{list(b.shape)}")
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in got])

  def wipe(self, user: str) -> bool:
    """Removes everything of the user's; False when there was nothing."""
    d = self.dir(user)
    if not os.path.exists(d):
      return False
    shutil.rmtree(d)
    fsync_dir(self.root)
    return True


class TieredUsers:
  """Each user's THEN memory in tiers: L1 (the model's ring buffer) + L2/L3 (memjax.then.tiers),
  in the user's own directory. The L1 state is saved inside tiers.npz, so one rename changes
  both; L3 bytes appended after the last save are dropped on the next open (a kill mid-ingest
  leaves the previous memory whole). Opening a user who has nothing writes nothing."""

  def __init__(self, store: UserStore, model, params, *, top_k: int = 4, l2_blocks: int = 64):
    self.store, self.model, self.params = store, model, params
    self.top_k, self.l2_blocks = top_k, l2_blocks
    m = model.m
    self.dims = dict(batch=1, layers=m.layers, kv_heads=m.kv_heads, head_dim=m.dim // m.heads,
                     block=model.writes_per_segment, l2_blocks=l2_blocks)

  def open(self, user: str):
    """-> (L1 state, Tiered runner) of the user; an empty memory for a new user."""
    from memjax.then.tiered import Tiered  # pylint: disable=g-import-not-at-top
    from memjax.then.tiers import Tiers  # pylint: disable=g-import-not-at-top
    d = self.store.dir(user)
    if os.path.exists(os.path.join(d, STATE)):
      raise StateError(f"{d}: holds a ring-buffer state ({STATE}), not tiers; wipe it or serve "
                       "it without --tiers")
    tiers = Tiers.open(d, **self.dims)
    like = self.model.init_state(1)
    state = (self.store.unpack(os.path.join(d, TIERS), tiers.extra, like) if tiers.extra
             else like)
    return state, Tiered(self.model, self.params, tiers, top_k=self.top_k)

  def save(self, run, state) -> None:
    run.tiers.save(extra=self.store.pack(state))

  def ingest(self, user: str, tokens_1xT) -> None:
    state, run = self.open(user)
    s = self.model.segment_len
    whole = tokens_1xT.shape[1] // s * s
    exact = self.model.m.layers > 1   # the scanned ingest is exact for one layer only
    if whole:
      state = run.ingest(state, tokens_1xT[:, :whole], exact=exact)
    if whole < tokens_1xT.shape[1]:
      state = run.run(state, tokens_1xT[:, whole:])[1]
    self.save(run, state)

  def query(self, user: str, tokens_1xS, *, incognito: bool = False):
    """-> logits; the memory is saved unless incognito (then nothing is written)."""
    state, run = self.open(user)
    logits, new = run.query(state, tokens_1xS, incognito=incognito)
    if not incognito:
      self.save(run, new)
    return logits


class Server:
  """A trained THEN model serving its users' memories from a state directory."""

  def __init__(self, workdir: str, state_dir: str, *, tiers: bool = False, top_k: int = 4,
               l2_blocks: int = 64):
    import hashlib  # pylint: disable=g-import-not-at-top
    from memjax.core import loop  # pylint: disable=g-import-not-at-top
    from memjax.then import model as then  # pylint: disable=g-import-not-at-top
    config, task, _, state = loop.restore_workdir(workdir)
    if config.model.name != "then":
      raise StateError(f"workdir: {workdir} holds a {config.model.name!r} model, not THEN")
    self.model = then.ThenModel(config, task.vocab_size,
                                config.model.segment_len or task.segment_len)
    self.params, self.vocab_size = state.params, task.vocab_size
    ident = hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()[:12]
    self.store = UserStore(state_dir, f"then:{ident}:step{int(state.step)}")
    self.tiered = (TieredUsers(self.store, self.model, self.params, top_k=top_k,
                               l2_blocks=l2_blocks) if tiers else None)
    self._ingest = jax.jit(self.model.ingest)
    self._segment = jax.jit(self.model.segment)

  def _check(self, tokens):
    bad = [t for t in tokens if not 0 <= t < self.vocab_size]
    if bad:
      raise StateError(f"tokens: {bad[0]} is outside the model's vocabulary [0, {self.vocab_size})")
    return jnp.asarray([tokens], jnp.int32)

  def ingest(self, user: str, tokens) -> int:
    x = self._check(tokens)
    if self.tiered:
      self.tiered.ingest(user, x)
      return x.shape[1]
    self._refuse_tiers(user)
    state = self.store.load(user, self.model.init_state(1))
    s = self.model.segment_len
    whole = x.shape[1] // s * s
    if whole:
      state = self._ingest(self.params, state, x[:, :whole])
    if whole < x.shape[1]:
      state = self._segment(self.params, state, x[:, whole:])[1]
    self.store.save(user, state)
    return x.shape[1]

  def query(self, user: str, tokens, *, incognito: bool = False) -> list[int]:
    """The most likely next token after each query token; the state is saved unless incognito."""
    x = self._check(tokens)
    if self.tiered:
      logits = self.tiered.query(user, x, incognito=incognito)
      return [int(t) for t in jnp.argmax(logits[0], -1)]
    self._refuse_tiers(user)
    state = self.store.load(user, self.model.init_state(1))
    logits, new = self.model.query(self.params, state, x, incognito=incognito)
    if not incognito:
      self.store.save(user, new)
    return [int(t) for t in jnp.argmax(logits[0], -1)]

  def _refuse_tiers(self, user: str) -> None:
    d = self.store.dir(user)
    if os.path.exists(os.path.join(d, TIERS)):
      raise StateError(f"{d}: holds tiers ({TIERS}); serve it with --tiers")
