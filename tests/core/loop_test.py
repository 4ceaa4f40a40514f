"""The generic loop: resume is bit-identical, NaN stops cleanly, a killed save loses nothing,
a damaged newest checkpoint is skipped, another model shape is named."""
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import checkpointing
from memjax.core import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**train):
  c = then_recall.get_config("tiny")
  c.train.update(train)
  return c


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """(workdir, final state) of the tiny config trained without interruption."""
  wd = str(tmp_path_factory.mktemp("straight"))
  return wd, loop.train(_config(), wd, progress=False, evaluate_at_end=False)["state"]


@pytest.fixture(scope="module")
def uninterrupted(straight):
  return straight[1]


def test_resume_is_bit_identical(tmp_path, uninterrupted):
  wd = str(tmp_path)
  loop.train(_config(), wd, progress=False, stop_after=10)            # checkpoint at step 10
  resumed = loop.train(_config(), wd, progress=False, evaluate_at_end=False)["state"]
  assert int(resumed.step) == int(uninterrupted.step) == 20
  for a, b in zip(_params(resumed), _params(uninterrupted)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(resumed.memory), jax.tree.leaves(uninterrupted.memory)):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  wd = str(tmp_path)
  saved = loop.train(_config(), wd, progress=False, stop_after=10)["state"]
  real_build = loop.build

  def poisoned_build(config):
    task, system, tx = real_build(config)
    def bad(p, b, m, a, r):
      loss, out = system.loss(p, b, m, a, r)
      return loss * jnp.nan, out
    return task, system.__class__(**{**system.__dict__, "loss": bad}), tx

  monkeypatch.setattr(loop, "build", poisoned_build)
  with pytest.raises(loop.TrainingDiverged, match="non-finite.*Last good checkpoint: step 10"):
    loop.train(_config(), wd, progress=False)
  mngr = checkpointing.manager(wd)
  assert mngr.latest_step() == 10
  state, _ = checkpointing.restore(mngr, checkpointing.abstract(saved))
  for a, b in zip(_params(state), _params(saved)):
    np.testing.assert_array_equal(a, b)


KILL_DURING_SAVE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from configs import then_recall
    from memjax.core import checkpointing
    from memjax.core import loop
    real_save = checkpointing.save
    def save_then_die(mngr, step, state, data_state):
      real_save(mngr, step, state, data_state)   # async: the write is still in flight
      if step == 20:
        os._exit(9)                              # killed mid-save, no finalisation
    checkpointing.save = save_then_die
    c = then_recall.get_config("tiny")
    loop.train(c, {wd!r}, progress=False)
""")


@pytest.mark.slow   # ~23 s on the 2-core CPU; .ci/run's slow line runs it by name
def test_run_killed_during_save_resumes_from_last_complete(tmp_path, uninterrupted):
  wd = str(tmp_path)
  code = KILL_DURING_SAVE.format(root=ROOT, wd=wd)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 9, proc.stderr[-2000:]
  mngr = checkpointing.manager(wd)
  assert mngr.latest_step() == 10       # step 20's save never completed
  mngr.close()
  resumed = loop.train(_config(), wd, progress=False, evaluate_at_end=False)["state"]
  for a, b in zip(_params(resumed), _params(uninterrupted)):
    np.testing.assert_array_equal(a, b)


def test_results_json_has_the_yardstick_keys(tmp_path):
  import json
  from memjax.core import yardstick
  c = _config(steps=5, steps_per_call=5, checkpoint_every=5)
  loop.train(c, str(tmp_path), progress=False)
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert set(yardstick.KEYS) <= set(results)
  assert results["chance"] == pytest.approx(1 / 8)
  assert 0.0 <= results["accuracy"] <= 1.0
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 1
  re = loop.evaluate_workdir(str(tmp_path))    # experiments/eval.py's path
  assert re["accuracy"] == results["accuracy"]


# orbax's reads pending when the damaged step failed report "Exception ignored" when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_latest_checkpoint_is_skipped_and_remade(tmp_path, straight, capsys):
  import shutil
  wd = str(tmp_path / "wd")
  shutil.copytree(straight[0], wd)
  for root, _, files in os.walk(os.path.join(wd, "checkpoints", "20", "state")):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)
  resumed = loop.train(_config(), wd, progress=False, evaluate_at_end=False)["state"]
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "step 20" in warnings[0] and "resuming from step 10" in warnings[0]
  assert os.listdir(os.path.join(wd, "checkpoints_damaged"))       # kept for inspection
  for a, b in zip(_params(resumed), _params(straight[1])):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert steps == [10, 20]          # step 20's row re-written once, not twice


def test_shape_mismatch_is_named_as_a_config_mismatch(tmp_path, straight):
  import shutil
  wd = str(tmp_path / "wd")
  shutil.copytree(straight[0], wd)
  c = _config()
  c.model.dim = 64
  with pytest.raises(checkpointing.ConfigMismatch, match=r"model.dim 64 vs 32"):
    loop.train(c, wd, progress=False, allow_config_change=True)
  assert not os.path.exists(os.path.join(wd, "config.history.jsonl"))   # nothing recorded


def _named(params):
  return {checkpointing.names(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_init_from_starts_a_fresh_run_at_the_source_params(tmp_path, straight):
  source, trained = straight
  first = sorted(_named(trained.params))[0]
  c = _config(init_from=source, init_skip=("^params/" + re.escape(first) + "$",))
  state = loop.train(c, str(tmp_path), progress=False, evaluate_at_end=False, stop_after=0)["state"]
  fresh = _named(loop.init_state(c, *loop.build(c)[1:]).params)
  got, want = _named(state.params), _named(trained.params)
  assert int(state.step) == 0 and set(got) == set(want)
  for name in got:
    np.testing.assert_array_equal(got[name], fresh[name] if name == first else want[name])
  assert not np.array_equal(fresh[first], want[first])    # the skip is visible


def test_init_from_takes_params_across_batch_sizes(tmp_path, straight):
  source, trained = straight
  c = _config(init_from=source, batch_size=2 * _config().train.batch_size)
  state = loop.train(c, str(tmp_path), progress=False, evaluate_at_end=False, stop_after=0)["state"]
  for a, b in zip(_params(state), _params(trained)):
    np.testing.assert_array_equal(a, b)


def test_init_from_other_shapes_or_no_workdir_is_one_named_error(tmp_path, straight):
  c = _config(init_from=straight[0])
  c.model.dim = 64
  with pytest.raises(checkpointing.ConfigMismatch, match=r"train.init_from: .*shape"):
    loop.train(c, str(tmp_path / "a"), progress=False)
  with pytest.raises(checkpointing.CheckpointError, match=r"no such directory"):
    loop.train(_config(init_from=str(tmp_path / "absent")), str(tmp_path / "b"), progress=False)
