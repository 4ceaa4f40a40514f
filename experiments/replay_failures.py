"""Replays the reliability failures of issue 11 against the binaries and checks each outcome.

  python experiments/replay_failures.py                   # every scenario (a few minutes on 2 cores)
  python experiments/replay_failures.py --scenarios=bad_inputs,divergence

Each scenario runs experiments/*.py as a user would (subprocesses, the tiny THEN
config) and prints one row per check: what was done, what came back (exit status,
stderr line count, the line itself). Exit status 0 when every check holds.
tests/core/replay_test.py runs the cheap scenarios in the default suite; the rest
are there as slow tests.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/then_recall.py:tiny"


@dataclasses.dataclass
class Check:
  name: str
  ok: bool | None       # None: could not be checked on this machine (said why in `shown`)
  shown: str = ""

  def __post_init__(self):
    if self.ok is not None:
      self.ok = bool(self.ok)


@dataclasses.dataclass
class Result:
  rc: int
  out: str
  err: str

  @property
  def lines(self) -> list:
    return self.err.strip().splitlines()

  def one_line(self, contains: str = "") -> bool:
    """exit 2, exactly one stderr line, `error: ...` containing `contains`."""
    return (self.rc == 2 and len(self.lines) == 1 and self.lines[0].startswith("error: ")
            and contains in self.lines[0])

  def show(self) -> str:
    last = self.lines[-1] if self.lines else ""
    return f"exit {self.rc}, {len(self.lines)} stderr line(s): {last[:230]}"


def _env():
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
              JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))


def run(*args, timeout: int = 600) -> Result:
  p = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=timeout)
  return Result(p.returncode, p.stdout, p.stderr)


def start(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def train(workdir: str, *extra) -> Result:
  return run("experiments/train.py", CONFIG, f"--workdir={workdir}", "--noprogress", *extra)


def _wait_for(path: str, timeout: float = 300, proc=None) -> bool:
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.exists(path):
      return True
    if proc is not None and proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  r.pop("train_seconds_this_run", None)     # wall time: differs between any two runs
  return r


def _metrics(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for r in rows:
    r.pop("steps_per_s", None)
  return rows


def _steps(workdir: str) -> list:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _damage(workdir: str, step: int) -> None:
  """Truncates every data file of one complete checkpoint (metadata files kept)."""
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)


def _tree_of(workdir: str, step: int):
  """(params leaves as numpy) of one checkpoint, restored against its own metadata."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)   # orbax logs every restore at INFO
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


class _UnwritableDir:
  """A directory this process cannot write: chmod for a normal user; root ignores modes, so
  there the immutable attribute (chattr +i, ext4) stands in. `path` is None if neither works."""

  def __init__(self, path: str):
    self.path, self._chattr = path, False

  def __enter__(self):
    if os.geteuid() != 0:
      os.chmod(self.path, 0o555)
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", self.path],
                                                   capture_output=True).returncode == 0:
      self._chattr = True
    try:
      with open(os.path.join(self.path, ".probe"), "w"):
        pass
      os.remove(os.path.join(self.path, ".probe"))
      self.__exit__()
      return None
    except OSError:
      return self.path

  def __exit__(self, *exc):
    if self._chattr:
      subprocess.run(["chattr", "-i", self.path], capture_output=True)
      self._chattr = False
    elif os.geteuid() != 0:
      os.chmod(self.path, 0o755)


# ----------------------------------------------------------------------------- scenarios


def _bad_input_cases(tmp: str, more: bool) -> list:
  a_file = os.path.join(tmp, "a_file")
  with open(a_file, "w") as f:
    f.write("not a directory")
  wd = os.path.join(tmp, "wd")
  cases = [
      ("train: missing config file", ("experiments/train.py", "--config=configs/missing.py",
                                      f"--workdir={wd}"), "cannot load the config file"),
      ("train: unknown override key", ("experiments/train.py", CONFIG, "--config.train.stepz=5",
                                       f"--workdir={wd}"), "unknown config key 'stepz'"),
      ("train: lr=inf", ("experiments/train.py", CONFIG, "--config.train.lr=inf",
                         f"--workdir={wd}"), "train.lr: must be finite"),
      ("train: lr=1e39 (inf in float32)", ("experiments/train.py", CONFIG,
                                           "--config.train.lr=1e39", f"--workdir={wd}"),
       "representable in float32"),
      ("train: workdir is a file", ("experiments/train.py", CONFIG, f"--workdir={a_file}"),
       "is a file"),
      ("eval: workdir is a file", ("experiments/eval.py", f"--workdir={a_file}"), "is a file"),
      ("phase1a: workdir is a file", ("experiments/phase1a.py", "--config=configs/phase1a_tiny.py",
                                      f"--workdir={a_file}"), "is a file"),
      ("export_hrrm: not an export", ("experiments/export_hrrm.py", f"--check={tmp}"),
       "incomplete export"),
      ("bench_train: unknown override key", ("experiments/bench_train.py",
                                             "--config.train.stepz=1"), "unknown config key"),
  ]
  if more:
    cases = [
        ("train: badly typed override", ("experiments/train.py", CONFIG,
                                         "--config.train.steps=x", f"--workdir={wd}"),
         "--config.train.steps=x"),
        ("train: workdir under a file", ("experiments/train.py", CONFIG,
                                         f"--workdir={a_file}/sub"), "cannot create it"),
        ("eval: not a workdir", ("experiments/eval.py", f"--workdir={tmp}/nothing"),
         "config.json"),
        ("bench_hrsa: bad list flag", ("experiments/bench_hrsa.py", "--lengths=abc"),
         "--lengths: expected integers"),
        ("bench_hrm: missing config file", ("experiments/bench_hrm.py",
                                            "--config=configs/missing.py"),
         "cannot load the config file"),
    ]
  return cases, wd


def _bad_inputs(tmp: str, more: bool) -> list:
  cases, wd = _bad_input_cases(tmp, more)
  checks = []
  if not more:
    ro = os.path.join(tmp, "readonly")
    os.makedirs(ro)
    with _UnwritableDir(ro) as unwritable:
      if unwritable:
        r = run("experiments/train.py", CONFIG, f"--workdir={unwritable}")
        checks.append(Check("train: unwritable workdir", r.one_line("not writable"), r.show()))
      else:
        checks.append(Check("train: unwritable workdir", None,
                            "skipped: neither chmod (root) nor chattr +i made a directory "
                            "unwritable"))
  for name, args, contains in cases:
    r = run(*args)
    checks.append(Check(name, r.one_line(contains), r.show()))
  checks.append(Check("nothing written by the refused runs", not os.path.exists(wd),
                      f"{wd} exists: {os.path.exists(wd)}"))
  return checks


def bad_inputs(tmp: str) -> list:
  """Every listed bad input of issue 11: one line on stderr, exit 2, nothing left behind."""
  return _bad_inputs(tmp, more=False)


def more_bad_inputs(tmp: str) -> list:
  """More of the same, beyond the issue's list (slow-marked in the suite: binaries start slowly)."""
  return _bad_inputs(tmp, more=True)


def divergence(tmp: str) -> list:
  """lr=3e38 (finite, passes validation) drives the parameters to inf: the run stops in one
  line and exit 2, every checkpoint on disk is finite; eval of the last good one prints
  nothing on stderr; eval into the same workdir made unwritable is refused before the
  yardstick; a NaN checkpoint made by hand is refused by eval.py in one line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  wd = os.path.join(tmp, "diverge")
  r = train(wd, "--config.train.lr=3e38", "--config.train.steps_per_call=1",
            "--config.train.checkpoint_every=1")
  checks = [Check("train lr=3e38: diverges, one line, exit 2", r.one_line("non-finite"), r.show())]
  steps = _steps(wd)
  finite = all(np.isfinite(x).all() for s in steps for x in _tree_of(wd, s))
  checks.append(Check("every checkpoint on disk is finite", bool(steps) and finite,
                      f"steps {steps}, all finite: {finite}"))
  r = run("experiments/eval.py", f"--workdir={wd}")
  checks.append(Check("eval of the last good checkpoint: exit 0, no stderr (no orbax noise)",
                      r.rc == 0 and not r.err.strip(), r.show()))
  results = open(os.path.join(wd, "results.json")).read()
  with _UnwritableDir(wd) as unwritable:
    if unwritable:
      r = run("experiments/eval.py", f"--workdir={wd}")
      checks.append(Check("eval into an unwritable workdir: refused before the yardstick, one "
                          "line, exit 2", r.one_line("not writable"), r.show()))
    else:
      checks.append(Check("eval into an unwritable workdir", None,
                          "skipped: neither chmod (root) nor chattr +i made a directory "
                          "unwritable"))
  checks.append(Check("  results.json as it was", results == open(os.path.join(
      wd, "results.json")).read(), ""))
  # A NaN checkpoint (as the unfixed loop saved): the same state with its parameters NaN.
  nan_wd = os.path.join(tmp, "nan")
  shutil.copytree(wd, nan_wd)
  os.remove(os.path.join(nan_wd, "results.json"))
  _poison(nan_wd, steps[-1])
  r = run("experiments/eval.py", f"--workdir={nan_wd}")
  checks.append(Check("eval of a NaN checkpoint: refused, one line, exit 2",
                      r.one_line("not finite"), r.show()))
  checks.append(Check("  and no results.json written",
                      not os.path.exists(os.path.join(nan_wd, "results.json")), ""))
  return checks


def _poison(workdir: str, step: int) -> None:
  """Rewrites checkpoint `step` with NaN parameters, its own shapes and dtypes kept."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
    tree["params"] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), tree["params"])
    shutil.rmtree(path)
    ckptr.save(path, tree)


def lock(tmp: str) -> list:
  """A workdir held by a live process: train.py and eval.py are refused in one line naming
  the holder; the holder killed with SIGKILL leaves a stale lock that the next run takes."""
  wd = os.path.join(tmp, "locked")
  holder = start("-c", "import sys, time; sys.path.insert(0, %r)\n"
                 "from memjax.core import workdir\nworkdir.claim(%r)\nprint('held', flush=True)\n"
                 "time.sleep(600)" % (ROOT, wd))
  try:
    ok = holder.stdout.readline().strip() == "held"
    r = train(wd)
    checks = [Check("second run refused: one line naming the holder, exit 2",
                    ok and r.one_line(f"pid {holder.pid}"), r.show())]
    with open(os.path.join(wd, "config.json"), "w") as f:
      f.write("{}")     # so eval gets as far as the lock
    r = run("experiments/eval.py", f"--workdir={wd}")
    checks.append(Check("eval.py refused while held: one line, exit 2",
                        r.one_line(f"pid {holder.pid}"), r.show()))
    os.remove(os.path.join(wd, "config.json"))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  checks.append(Check("holder killed: its LOCK file is left behind",
                      os.path.exists(os.path.join(wd, "LOCK")), ""))
  code = ("import sys; sys.path.insert(0, %r)\nfrom memjax.core import workdir\n"
          "workdir.claim(%r).release()\nprint('taken')" % (ROOT, wd))
  r = run("-c", code)
  checks.append(Check("stale lock taken over with a warning naming the dead pid",
                      r.rc == 0 and "taken" in r.out and f"pid {holder.pid}" in r.err
                      and "no longer exists" in r.err, r.show()))
  return checks


def two_runs(tmp: str, clean: str) -> list:
  """Two train.py on one workdir, seconds apart, other seeds: the second is refused, and the
  first run's printed results are the ones on disk, identical to a run alone."""
  wd = os.path.join(tmp, "two")
  first = start("experiments/train.py", CONFIG, f"--workdir={wd}", "--noprogress")
  _wait_for(os.path.join(wd, "LOCK"), proc=first)
  second = train(wd, "--config.train.seed=1")
  out, err = first.communicate(timeout=900)
  printed = next((line.split()[-1] for line in out.splitlines() if line.startswith("accuracy ")),
                 None)
  disk = _results(wd)
  return [
      Check("second run refused: one line, exit 2", second.one_line("is in use by"),
            second.show()),
      Check("first run finished: exit 0", first.returncode == 0, err.strip()[-200:]),
      Check("first run's printed accuracy is the one on disk",
            printed is not None and float(printed) == round(disk["accuracy"], 4),
            f"printed {printed}, results.json {disk['accuracy']:.4f}"),
      Check("results identical to a run alone", disk == _results(clean), ""),
  ]


def config_change(tmp: str, clean: str) -> list:
  """Extending a finished run (steps 20 -> 40) is refused with the differing keys and nothing
  touched; allowed, the previous config is kept in config.history.jsonl; a model shape change
  is named as a config/checkpoint mismatch."""
  wd = os.path.join(tmp, "extend")
  shutil.copytree(clean, wd)
  before = open(os.path.join(wd, "config.json")).read()
  steps_before = _steps(wd)
  r = train(wd, "--config.train.steps=40")
  checks = [Check("steps=40 on a 20-step workdir: refused, keys listed, exit 2",
                  r.one_line("train.steps 20 -> 40") and "--allow_config_change" in r.err,
                  r.show()),
            Check("  config.json and checkpoints untouched",
                  open(os.path.join(wd, "config.json")).read() == before
                  and _steps(wd) == steps_before, "")]
  r = train(wd, "--config.train.steps=40", "--allow_config_change")
  with open(os.path.join(wd, "config.history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  checks.append(Check("--allow_config_change: trains on to 40, history kept",
                      r.rc == 0 and _results(wd)["train_steps"] == 40 and len(history) == 1
                      and history[0]["changes"] == {"train.steps": [20, 40]}
                      and history[0]["previous"]["train"]["steps"] == 20
                      and os.path.exists(os.path.join(wd, "results.step20.json")),
                      f"exit {r.rc}, history rows {len(history)}: {history[0]['changes']}"))
  shape = os.path.join(tmp, "shape")
  shutil.copytree(clean, shape)
  r = train(shape, "--config.model.dim=64", "--allow_config_change")
  checks.append(Check("model.dim 64 on a dim-32 checkpoint: one line naming it, exit 2",
                      r.one_line("config does not match the checkpoint")
                      and "model.dim 64 vs 32" in r.err, r.show()))
  return checks


def corrupt_latest(tmp: str, clean: str) -> list:
  """A damaged newest checkpoint: eval.py and train.py skip it with a warning naming it; the
  resumed run ends where a run without the fault ends (parameters, results, metrics rows)."""
  wd = os.path.join(tmp, "damaged")
  shutil.copytree(clean, wd)
  _damage(wd, 20)
  r = run("experiments/eval.py", f"--workdir={wd}")
  warned = [line for line in r.lines if line.startswith("warning:")]
  checks = [Check("eval.py: skips step 20 with one warning, evaluates step 10",
                  r.rc == 0 and len(r.lines) == 1 and len(warned) == 1 and "step 20" in warned[0]
                  and _results(wd)["train_steps"] == 10, r.show())]
  os.remove(os.path.join(wd, "results.json"))
  r = train(wd)
  warned = [line for line in r.lines if line.startswith("warning:")]
  checks.append(Check("train.py: skips step 20 with one warning, moves it aside, resumes",
                      r.rc == 0 and len(r.lines) == 1 and len(warned) == 1
                      and "step 20" in warned[0] and "resuming from step 10" in warned[0]
                      and os.path.isdir(os.path.join(wd, "checkpoints_damaged")), r.show()))
  import numpy as np  # pylint: disable=g-import-not-at-top
  same = all(np.array_equal(a, b) for a, b in zip(_tree_of(wd, 20), _tree_of(clean, 20)))
  checks.append(Check("step 20 re-made bit-identical to the run without the fault", same, ""))
  checks.append(Check("results.json identical to the run without the fault",
                      _results(wd) == _results(clean), ""))
  rows = _metrics(wd)
  checks.append(Check("metrics.jsonl: one row per step, as without the fault",
                      rows == _metrics(clean), f"steps {[m['step'] for m in rows]}"))
  return checks


KILL_DURING_EVAL = """
import os, sys
sys.path.insert(0, {root!r})
from configs import then_recall
from memjax.core import loop
def die(*a, **k):
  os._exit(9)                   # killed during the final evaluation
loop.evaluate = die
c = then_recall.get_config("tiny")
c.train.steps = 40
loop.train(c, {wd!r}, progress=False, allow_config_change=True)
"""


def kill_during_eval(tmp: str, clean: str) -> list:
  """Killed during the final evaluation of an extended run: no results.json beside the newer
  checkpoints (the step-20 one was moved to results.step20.json when training resumed)."""
  wd = os.path.join(tmp, "killed")
  shutil.copytree(clean, wd)
  r = run("-c", KILL_DURING_EVAL.format(root=ROOT, wd=wd))
  return [Check("killed in the final evaluation (exit 9) after checkpoint 40",
                r.rc == 9 and _steps(wd)[-1] == 40, r.show()),
          Check("  no results.json beside checkpoint 40; the old one is results.step20.json",
                not os.path.exists(os.path.join(wd, "results.json"))
                and os.path.exists(os.path.join(wd, "results.step20.json")), "")]


def overrides(tmp: str) -> list:
  """train.b1, train.b2, train.end_lr_fraction, train.tensorboard: overridable (they crashed)."""
  wd = os.path.join(tmp, "overrides")
  r = train(wd, "--config.train.b1=0.8", "--config.train.b2=0.95",
            "--config.train.end_lr_fraction=0.2", "--config.train.tensorboard=true",
            "--config.train.steps=5", "--config.train.steps_per_call=5",
            "--config.train.checkpoint_every=5")
  return [Check("b1, b2, end_lr_fraction, tensorboard overridden: exit 0",
                r.rc == 0 and os.path.isdir(os.path.join(wd, "tensorboard")), r.show())]


CHEAP = ("bad_inputs", "divergence", "lock")
NEEDS_CLEAN = ("two_runs", "config_change", "corrupt_latest", "kill_during_eval")
SLOW = NEEDS_CLEAN + ("more_bad_inputs", "overrides")
ALL = CHEAP + SLOW


def replay(names, tmp: str, log=print) -> list:
  """Runs the named scenarios in `tmp`; returns [(scenario, Check)]."""
  out = []
  clean = None
  for name in names:
    fn = globals()[name]
    if name in NEEDS_CLEAN:
      if clean is None:     # the run without a fault that the survivable ones must equal
        clean = os.path.join(tmp, "clean")
        r = train(clean)
        if r.rc != 0:
          raise RuntimeError(f"the clean reference run failed: {r.err[-2000:]}")
      checks = fn(tmp, clean)
    else:
      checks = fn(tmp)
    for c in checks:
      mark = "skip" if c.ok is None else "ok  " if c.ok else "FAIL"
      log(f"{mark} {name:16} {c.name}" + (f"\n{'':22}{c.shown}" if c.shown else ""))
      out.append((name, c))
  return out


def main():
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  names = flags.DEFINE_list("scenarios", list(ALL), f"Which of {list(ALL)}.")
  keep = flags.DEFINE_bool("keep", False, "Keep the scratch directory.")

  def _main(argv):
    del argv
    unknown = set(names.value) - set(ALL)
    if unknown:
      print(f"error: --scenarios: unknown {sorted(unknown)}; choose from {list(ALL)}",
            file=sys.stderr)
      return 2
    tmp = tempfile.mkdtemp(prefix="replay_")
    t0 = time.time()
    try:
      results = replay(names.value, tmp)
    finally:
      if not keep.value:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = [c for _, c in results if c.ok is False]
    print(f"\n{len(results) - len(bad)}/{len(results)} checks hold "
          f"({time.time() - t0:.0f} s){'' if not keep.value else f'; scratch: {tmp}'}")
    return 1 if bad else 0

  app.run(_main)


if __name__ == "__main__":
  main()
