"""Two JAX processes on localhost (gloo CPU collectives) train like one process.

Each child is experiments/train.py (or eval.py) with one CPU device (conftest's 4 devices are
this parent's only); the parent reads their checkpoints and files. The training test is slow
(three pairs of training processes, each compiling the tiny THEN model, then a pair of eval
processes): `pytest -m slow tests/core/multihost_test.py`. The bad-input tests are quick.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import then_recall
from memjax.core import checkpointing
from memjax.core import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "experiments", "train.py")
EVAL = os.path.join(ROOT, "experiments", "eval.py")
STEPS = 40
# The tiny config, longer, so that a kill after the first checkpoint lands mid-run.
OVERRIDES = dict(steps=STEPS, checkpoint_every=10, log_every=10, steps_per_call=5)
TIMEOUT_S = 600  # per child, generous: CI shares 2 cores


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)  # one CPU device per child, whatever the parent was given
  return env


def _launch(workdir, n=2, port=None, extra=(), ids=None, tensorboard=False):
  port = port or _port()
  args = [f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]
  args.append(f"--config.train.tensorboard={tensorboard}")
  procs = []
  for i in (range(n) if ids is None else ids):
    cmd = [sys.executable, TRAIN, "--config=configs/then_recall.py:tiny", f"--workdir={workdir}",
           "--progress=false", f"--num_processes={n}", f"--process_id={i}",
           f"--coordinator_address=127.0.0.1:{port}", *args, *extra]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def _wait(procs, timeout=TIMEOUT_S):
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out))
  return outs


def _config():
  c = then_recall.get_config("tiny")
  c.train.update(**OVERRIDES)
  return c


def _params(workdir, config):
  """The params of the latest checkpoint, restored into this (single) process."""
  task, system, tx = loop.build(config)
  abstract = checkpointing.abstract(loop.init_state(config, system, tx))
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    state, _ = checkpointing.restore(mngr, abstract)
  finally:
    mngr.close()
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _results_with_time(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _results(workdir):
  r = _results_with_time(workdir)
  r.pop("train_seconds_this_run")
  return r


def _logged_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def _assert_same_results(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], float):
      # Accuracies are ratios of counts: equal unless an argmax flipped. Losses float32.
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    else:
      assert a[k] == b[k], k


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_a_kill(tmp_path):
  config = _config()
  two, one, killed = (str(tmp_path / d) for d in ("two", "one", "killed"))

  # Two processes, each reading half of every batch, uninterrupted.
  for rc, out in _wait(_launch(two, tensorboard=True)):
    assert rc == 0, out[-3000:]

  # One process with the whole batch (this process, no mesh: data_parallel 1).
  ref = loop.train(config, one, progress=False)
  ref_params = [np.asarray(x) for x in jax.tree.leaves(ref["state"].params)]
  step, params = _params(two, config)
  assert step == STEPS
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_params, params))
  print(f"max |param(1 process) - param(2 processes)| after {STEPS} steps: {diff:.3g}")
  for a, b in zip(ref_params, params):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  _assert_same_results(_results(one), _results(two))

  # Nothing written twice: one config, one metrics file (each step once), one results.json,
  # one TensorBoard event file, no per-process files.
  assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "metrics.jsonl",
                                     "results.json", "tensorboard"]
  assert len(glob.glob(os.path.join(two, "tensorboard", "*"))) == 1
  assert _logged_steps(two) == list(range(10, STEPS + 1, 10))

  # Kill process 1 once the first checkpoint is complete, then restart both.
  procs = _launch(killed)
  first = os.path.join(killed, "checkpoints", "10")
  deadline = time.time() + TIMEOUT_S
  while not os.path.isdir(first) and time.time() < deadline and procs[1].poll() is None:
    time.sleep(0.05)
  assert os.path.isdir(first), "no first checkpoint"
  procs[1].send_signal(signal.SIGKILL)
  try:  # the survivor fails on its next collective or is stopped here: no hang either way
    procs[0].wait(timeout=20)
  except subprocess.TimeoutExpired:
    procs[0].kill()
  _wait(procs)
  mngr = checkpointing.manager(killed, read_only=True)
  resumed_from = mngr.latest_step()
  mngr.close()
  assert resumed_from is not None and resumed_from < STEPS, f"not killed mid-run ({resumed_from})"
  assert not os.path.exists(os.path.join(killed, "results.json"))

  for rc, out in _wait(_launch(killed)):
    assert rc == 0, out[-3000:]
  step, resumed = _params(killed, config)
  assert step == STEPS
  for a, b in zip(params, resumed):
    np.testing.assert_array_equal(a, b)  # same processes, same data order: bit-identical
  _assert_same_results(_results(two), _results(killed))
  # Resumed, not restarted: every step up to the restored checkpoint was logged once.
  logged = _logged_steps(killed)
  assert all(logged.count(s) == 1 for s in range(10, resumed_from + 1, 10)), logged
  assert sorted(os.listdir(killed)) == ["checkpoints", "config.json", "metrics.jsonl",
                                        "results.json"]

  # experiments/eval.py as two processes rewrites the same results.json, once.
  os.remove(os.path.join(two, "results.json"))
  port = _port()
  procs = [subprocess.Popen([sys.executable, EVAL, f"--workdir={two}", "--num_processes=2",
                             f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  outs = _wait(procs)
  for rc, out in outs:
    assert rc == 0, out[-3000:]
  assert ("results:" in outs[0][1]) and ("results:" not in outs[1][1])  # one table, from 0
  evaluated = _results_with_time(two)
  assert "train_seconds_this_run" not in evaluated
  _assert_same_results(_results(killed), evaluated)


def _error_line(out):
  lines = [l for l in out.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, out[-3000:]
  return lines[0]


def test_process_id_out_of_range_is_one_line(tmp_path):
  (rc, out), = _wait(_launch(str(tmp_path), ids=[2]), timeout=120)
  assert rc == 2
  assert "--process_id=2 is out of range for --num_processes=2" in _error_line(out)
  assert not os.path.exists(tmp_path / "config.json")


def test_unreachable_coordinator_fails_within_the_timeout(tmp_path):
  t0 = time.time()
  (rc, out), = _wait(_launch(str(tmp_path), ids=[1], extra=["--coordinator_timeout_s=5"]),
                     timeout=120)
  assert rc == 2
  assert "could not join the coordinator" in _error_line(out)
  assert "Traceback" not in out and "Check failure" not in out
  print(f"unreachable coordinator: exit 2 after {time.time() - t0:.1f} s (timeout 5 s)")


def test_mismatched_num_processes_fails_in_every_process(tmp_path):
  port = _port()
  procs = (_launch(str(tmp_path), n=2, port=port, ids=[0], extra=["--coordinator_timeout_s=20"])
           + _launch(str(tmp_path), n=3, port=port, ids=[1], extra=["--coordinator_timeout_s=20"]))
  outs = _wait(procs, timeout=120)
  for rc, out in outs:
    assert rc == 2, out[-3000:]
    assert "disagree" in _error_line(out)
  assert not os.path.exists(tmp_path / "config.json")


_ON_MAIN = """
import sys, jax
from memjax.core import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), timeout_s=60)
print("first", distributed.on_main(lambda: "lock"))
def taken(): raise ValueError("workdir is locked")
try:
  distributed.on_main(taken)
except Exception as e:
  print("second", type(e).__name__, e)
"""


def test_on_main_runs_once_and_shares_its_error():
  port = _port()
  procs = [subprocess.Popen([sys.executable, "-c", _ON_MAIN, f"127.0.0.1:{port}", str(i)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  (rc0, out0), (rc1, out1) = _wait(procs, timeout=120)
  assert rc0 == 0 and rc1 == 0, out0 + out1
  assert "first lock" in out0 and "first None" in out1
  assert "second ValueError workdir is locked" in out0
  assert "second DistributedError process 0: workdir is locked" in out1
