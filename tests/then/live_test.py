"""Per-user live memory: ids are names, saves are atomic, wipe leaves nothing, incognito
writes nothing."""
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import tasks
from memjax.then import live
from memjax.then import model as then

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup():
  c = then_recall.get_config("tiny")
  task = tasks.make_task(c.task)
  model = then.ThenModel(c, task.vocab_size, task.segment_len)
  params = model.init_params(jax.random.key(0))
  x = jnp.asarray(next(iter(task.batches("train", 1, 0)))["inputs"])
  return model, params, x


def _tree(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def _equal(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("user", ["../x", "/abs", "a/b", "", "x" * 300, ".", "..", "a b", None])
def test_user_ids_are_names_never_paths(tmp_path, user):
  store = live.UserStore(str(tmp_path / "s"), "m")
  with pytest.raises(live.StateError, match="^user: .* is not a user id"):
    store.dir(user)
  assert os.listdir(tmp_path / "s") == []


def test_two_users_keep_their_own_state(tmp_path, setup):
  model, params, x = setup
  store = live.UserStore(str(tmp_path), "m1")
  a = model.ingest(params, model.init_state(1), x[:, :8])
  b = model.ingest(params, model.init_state(1), x[:, 8:16])
  store.save("alice", a)
  store.save("bob", b)
  assert store.users() == ["alice", "bob"]
  assert _equal(store.load("alice", model.init_state(1)), a)
  assert _equal(store.load("bob", model.init_state(1)), b)
  assert not _equal(a, b)
  fresh = model.init_state(1)
  assert store.load("carol", fresh) is fresh          # a new user starts empty


def test_incognito_query_changes_no_byte_and_no_leaf(tmp_path, setup):
  model, params, x = setup
  store = live.UserStore(str(tmp_path), "m1")
  store.save("alice", model.ingest(params, model.init_state(1), x[:, :16]))
  before = _tree(tmp_path)
  state = store.load("alice", model.init_state(1))
  _, after = model.query(params, state, x[:, 16:24], incognito=True)
  assert _equal(state, after)
  assert _tree(tmp_path) == before


def test_wipe_leaves_nothing_of_the_user(tmp_path, setup):
  model, params, x = setup
  store = live.UserStore(str(tmp_path), "m1")
  store.save("alice", model.ingest(params, model.init_state(1), x[:, :8]))
  store.save("bob", model.ingest(params, model.init_state(1), x[:, :8]))
  bob = _tree(tmp_path / "bob")
  assert store.wipe("alice") and not store.wipe("alice")
  assert not any("alice" in p for p in _tree(tmp_path))
  assert store.users() == ["bob"] and _tree(tmp_path / "bob") == bob


def test_load_refuses_another_model_or_structure(tmp_path, setup):
  model, params, x = setup
  live.UserStore(str(tmp_path), "m1").save("alice", model.init_state(1))
  with pytest.raises(live.StateError, match="written for model 'm1'"):
    live.UserStore(str(tmp_path), "m2").load("alice", model.init_state(1))
  store = live.UserStore(str(tmp_path), "m1")
  with pytest.raises(live.StateError, match="tree structure"):
    store.load("alice", {"other": jnp.zeros(1)})
  with pytest.raises(live.StateError, match="leaf 0"):
    store.load("alice", model.init_state(2))
  (tmp_path / "alice" / "state.npz").write_bytes(b"not a zip")
  with pytest.raises(live.StateError, match="unreadable"):
    store.load("alice", model.init_state(1))


_KILL_DURING_SAVE = """
import os, sys, numpy as np
sys.path.insert(0, {root!r})
from memjax.then import live
store = live.UserStore({d!r}, "m1")
real = np.savez
def dying(f, **kw):   # half the file written, then the process is killed
  f.write(b"PK\\x03\\x04 partial")
  f.flush()
  os._exit(9)
np.savez = dying
store.save("alice", {{"x": np.ones(3)}})
"""


def test_kill_during_save_keeps_the_previous_state(tmp_path):
  d = str(tmp_path)
  store = live.UserStore(d, "m1")
  store.save("alice", {"x": np.zeros(3)})
  p = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE.format(root=ROOT, d=d)],
                     capture_output=True, timeout=120)
  assert p.returncode == 9
  assert any(f.startswith(live.TMP_PREFIX) for f in os.listdir(tmp_path / "alice"))
  store = live.UserStore(d, "m1")   # the next open removes what the kill left
  assert store.removed_temporaries and os.listdir(tmp_path / "alice") == ["state.npz"]
  np.testing.assert_array_equal(store.load("alice", {"x": np.ones(3)})["x"], np.zeros(3))


def test_binary_refuses_a_path_as_user_in_one_line(tmp_path):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "then_live.py"), "wipe",
                      f"--state_dir={tmp_path}", "--user=../x"],
                     capture_output=True, text=True, timeout=120, cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert p.returncode == 2 and p.stderr.strip().splitlines() == [
      "error: user: '../x' is not a user id (1-64 characters of A-Z a-z 0-9 _ -)"]
  assert os.listdir(tmp_path) == []


def _tiered(tmp_path, setup, model_id="m1"):
  from memjax.then.tiers import Tiers  # noqa: F401
  model, params, _ = setup
  return live.TieredUsers(live.UserStore(str(tmp_path), model_id), model, params, top_k=2,
                          l2_blocks=2)


def test_tiered_users_keep_their_own_tiers_and_incognito_writes_nothing(tmp_path, setup):
  model, params, x = setup
  rng = np.random.default_rng(0)
  streams = {u: jnp.asarray(rng.integers(0, 20, (1, 8 * 10)), jnp.int32) for u in ("alice", "bob")}
  users = _tiered(tmp_path, setup)
  for u, s in streams.items():
    users.ingest(u, s[:, :-8])
  assert sorted(os.listdir(tmp_path / "alice")) == ["l3-0.bin", "tiers.npz"]
  for u, s in streams.items():   # each user's answer is the one of a memory that saw their stream
    from memjax.then.tiered import Tiered
    from memjax.then.tiers import Tiers
    ref = Tiered(model, params, Tiers(str(tmp_path / f"ref-{u}"), **users.dims), top_k=2)
    want, _ = ref.query(ref.ingest(model.init_state(1), s[:, :-8]), s[:, -8:])
    np.testing.assert_array_equal(users.query(u, s[:, -8:], incognito=True), want)
  before = _tree(tmp_path)
  state, run = users.open("alice")
  users.query("alice", streams["alice"][:, -8:], incognito=True)
  users.query("carol", streams["alice"][:, -8:], incognito=True)   # a new user: nothing made
  assert _tree(tmp_path) == before and not os.path.exists(tmp_path / "carol")
  assert _equal(users.open("alice")[0], state)
  users.query("alice", streams["alice"][:, -8:])                    # a normal query writes
  assert _tree(tmp_path) != before
  bob = _tree(tmp_path / "bob")
  assert users.store.wipe("alice")
  assert not os.path.exists(tmp_path / "alice") and _tree(tmp_path / "bob") == bob


def test_tiered_users_refuse_damaged_or_foreign_files_in_one_line(tmp_path, setup):
  from memjax.then.tiers import TierError
  model, params, x = setup
  users = _tiered(tmp_path, setup)
  users.ingest("alice", jnp.tile(x[:, :8], (1, 8)))
  d = tmp_path / "alice"
  with pytest.raises(live.StateError, match="written for model 'm1'"):
    _tiered(tmp_path, setup, "m2").open("alice")
  good = (d / "tiers.npz").read_bytes()
  (d / "l3-0.bin").rename(d / "moved")
  with pytest.raises(TierError, match="missing or truncated"):
    users.open("alice")
  (d / "moved").rename(d / "l3-0.bin")
  (d / "tiers.npz").write_bytes(b"not a zip")
  with pytest.raises(TierError, match="unreadable tier file"):
    users.open("alice")
  assert (d / "tiers.npz").read_bytes() == b"not a zip"   # refused, never rewritten
  (d / "tiers.npz").write_bytes(good)
  users.open("alice")
  live.UserStore(str(tmp_path), "m1").save("bob", model.init_state(1))
  with pytest.raises(live.StateError, match="ring-buffer state"):
    users.open("bob")
