"""One writer per workdir, checked writable before any work, and the files every run keeps.

A workdir holds days of training: `claim(workdir)` is the first thing a binary does
with it. It checks that the path is (or can become) a writable directory and takes
an exclusive lock (`LOCK`, naming host, pid and start time), released at exit. A
second run on the same workdir is refused with one line naming the holder; a lock
left by a process that died (kill -9, power loss) is taken over with a warning.

config.json, config.history.jsonl and the rewritten metrics.jsonl are written
atomically here (`write_text`: written beside, fsynced, renamed), results.json by
yardstick.write_results the same way, so a kill never leaves a half-written file.
The run-start rewrites are called from one place, loop._start_files (multi-host:
process 0's job).
"""
from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from memjax.core.config import ConfigError

LOCK = "LOCK"


class WorkdirError(OSError):
  """The workdir is unusable (a file, not writable) or held by another run."""

  def __str__(self):  # OSError's str() would prefix "[Errno ...]" when built with two args
    return self.args[0] if self.args else super().__str__()


def warn(message: str) -> None:
  """A warning the user must see (stale lock taken over, checkpoint skipped): one line on
  stderr, whatever the logging verbosity."""
  print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def check_writable(workdir: str, *, create: bool = True) -> str:
  """Makes sure `workdir` is a directory this process can write; returns its absolute path."""
  if not workdir:
    raise WorkdirError("--workdir: empty path")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"workdir {workdir}: is a file, not a directory")
  if not os.path.isdir(path):
    if not create:
      raise WorkdirError(f"workdir {workdir}: does not exist")
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f"workdir {workdir}: cannot create it ({e.strerror or e})") from e
  # os.access answers for the real uid and ignores read-only mounts: write a probe instead.
  probe = os.path.join(path, f".write_test.{os.getpid()}")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror or e})") from e
  return path


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} since "
          f"{holder.get('start', '?')} ({holder.get('command', '?')})")


class Lock:
  """An exclusive lock on a workdir: flock on `<workdir>/LOCK`, whose text names the holder.

  flock is released by the kernel when the holder dies, so a lock that can be taken
  while the file names someone else is stale: its holder is gone. The file's inode is
  checked after locking, so a release (which unlinks the file) racing a new claim can
  never leave two holders."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self.fd = None

  def acquire(self) -> "Lock":
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise WorkdirError(f"{self.path}: cannot lock ({e.strerror or e})") from e
        raise WorkdirError(f"workdir {os.path.dirname(self.path)} is in use by "
                           f"{_describe(self._read())}; wait for it or use another --workdir")
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)           # the previous holder unlinked it between our open and flock: retry
    self.fd = fd
    old = self._read()
    if old:
      gone = (" (that process no longer exists)" if old.get("host") == socket.gethostname()
              and isinstance(old.get("pid"), int) and not _pid_alive(old["pid"]) else "")
      warn(f"workdir {os.path.dirname(self.path)}: taking over a stale lock of "
           f"{_describe(old)}{gone}")
    me = dict(host=socket.gethostname(), pid=os.getpid(),
              start=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              command=" ".join(os.path.basename(a) if i == 0 else a
                               for i, a in enumerate(sys.argv))[:300])
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    os.fsync(fd)
    _HELD.append(self)
    return self

  def _read(self) -> dict:
    try:
      with open(self.path) as f:
        text = f.read()
      return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
      return {"host": "?", "pid": "?", "start": "?", "command": "unreadable LOCK file"}

  def release(self) -> None:
    if self.fd is None:
      return
    try:
      os.unlink(self.path)   # while still locked: a waiting claimant re-checks the inode
    except OSError:
      pass
    os.close(self.fd)
    self.fd = None
    if self in _HELD:
      _HELD.remove(self)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


_HELD: list[Lock] = []


def release_all() -> None:
  """Releases every lock this process holds (at exit, and before os._exit, which skips it)."""
  for lock in list(_HELD):
    lock.release()


atexit.register(release_all)


def claim(workdir: str, *, create: bool = True) -> Lock:
  """Checks `workdir` is a writable directory, then locks it for this process."""
  return Lock(check_writable(workdir, create=create)).acquire()


class _NoLock:
  def release(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


def claim_primary(workdir: str, *, create: bool = True):
  """`claim` on process 0, the one writer of a multi-host run; a no-op elsewhere. A refusal in
  process 0 is raised in every process (distributed.on_main), so none of them hangs."""
  from memjax.core import distributed  # pylint: disable=g-import-not-at-top  (jax)
  lock = distributed.on_main(claim, workdir, create=create)
  return _NoLock() if lock is None else lock


# ----------------------------------------------------------------------------- atomic files


def write_text(path: str, text: str) -> str:
  """Writes `path` atomically: a kill leaves the old file or the new one, never half of one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def write_json(path: str, obj) -> str:
  return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- resume hygiene


def truncate_metrics(workdir: str, step: int) -> int:
  """Drops metrics.jsonl rows past `step` (re-run after a resume); returns rows dropped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue            # a line cut by a kill mid-write
    if isinstance(row, dict) and row.get("step", 0) <= step:
      keep.append(json.dumps(row) + "\n")
  if len(keep) != len(lines):
    write_text(path, "".join(keep))
  return len(lines) - len(keep)


def retire_results(workdir: str) -> str | None:
  """Moves results.json aside before training continues, so it never sits beside newer
  checkpoints: results.json -> results.step<N>.json (N: the step it measured)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      step = json.load(f).get("train_steps", "unknown")
  except (OSError, ValueError):
    step = "unknown"
  dest = os.path.join(workdir, f"results.step{step}.json")
  os.replace(path, dest)
  return dest


# ----------------------------------------------------------------------------- config history


def _flatten(d, prefix="") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


_MISSING = "<absent>"


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """[(dotted key, old value, new value)] for every key that differs (absent on one side too)."""
  a, b = _flatten(old), _flatten(new)
  return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
          if a.get(k, _MISSING) != b.get(k, _MISSING)]


def format_changes(changes) -> str:
  return ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in changes)


def config_dict(config) -> dict:
  """A ConfigDict as the plain JSON object config.json holds (same normalisation both sides)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def check_config(workdir: str, config, *, allow_change: bool) -> list:
  """The changes from the workdir's config.json to `config` ([] for a new workdir); a changed
  config raises ConfigError listing them, unless `allow_change`. Writes nothing."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      old = json.load(f)
  except ValueError as e:
    raise WorkdirError(f"{path}: corrupt JSON ({e}); move it away to start afresh") from e
  changes = config_changes(old, config_dict(config))
  if changes and not allow_change:
    raise ConfigError(
        f"config differs from the run in this workdir ({path}): {format_changes(changes)}; "
        f"pass --allow_config_change to continue with the new config (recorded in "
        f"config.history.jsonl), or use another --workdir")
  return changes


def record_config(workdir: str, config, changes, *, step: int) -> None:
  """Writes config.json; a change (allowed by check_config) first appends the previous config
  and the changes to config.history.jsonl, with the step the new config starts at."""
  path = os.path.join(workdir, "config.json")
  if changes:
    with open(path) as f:
      old = json.load(f)
    row = dict(time=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               step=step, changes={k: [o, n] for k, o, n in changes}, previous=old)
    with open(os.path.join(workdir, "config.history.jsonl"), "a") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())
  if changes or not os.path.exists(path):
    write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))
