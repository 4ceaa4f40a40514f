"""What every binary shares: one error path, one line on stderr and exit status 2.

  from memjax.core import cli
  def main(argv): ...                       # raise; never print-and-return an error
  if __name__ == "__main__":
    cli.run(main)                           # instead of absl.app.run(main)

`run` parses the flags and runs `main` so that every error a user can fix (a
config file that does not load, an unknown or badly typed override, a workdir
that is a file, unwritable or in use, a damaged or mismatched checkpoint, a
diverged run) prints `error: <what, where>` as the only line on stderr and exits
with status 2. Anything else is a bug: it keeps its traceback.

Kept light to import (no jax): a flag error is reported before anything heavy loads.
"""
from __future__ import annotations

import gc
import os
import re
import sys
import threading

from memjax.core import config as cfg
from memjax.core import errors
from memjax.core import workdir as wd_lib

EXIT_USER_ERROR = 2


_EXTRA: list = []


def also_user_errors(*types) -> None:
  """Adds a binary's own error types (a loader's "not a tokenizer file") to the one-line path."""
  _EXTRA.extend(types)


def user_errors() -> tuple:
  from memjax.core import checkpointing  # pylint: disable=g-import-not-at-top  (jax, orbax)
  from memjax.core import distributed  # pylint: disable=g-import-not-at-top
  return (cfg.ConfigError, checkpointing.CheckpointError, errors.TrainingDiverged,
          errors.TrainingStopped, distributed.DistributedError, OSError, *_EXTRA)


def one_line(message) -> str:
  """Whitespace (newlines from orbax/tensorstore/ml_collections text) collapsed to one line."""
  return " ".join(str(message).split())


def _errno_text(text: str) -> str | None:
  m = re.search(r"\[Errno \d+\] ([^:\n]+)", text)
  return m.group(1) if m else None


def _chain(e: BaseException) -> list:
  out = []
  while e is not None and e not in out:
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def describe(e: BaseException) -> str:
  """The one line for a user error (for a ConfigError re-raised with context, its innermost
  ConfigError: the one that names the field)."""
  if isinstance(e, cfg.ConfigError):
    return one_line([x for x in _chain(e) if isinstance(x, cfg.ConfigError)][-1])
  if isinstance(e, OSError) and not isinstance(e, wd_lib.WorkdirError) and e.filename:
    return one_line(f"{e.filename}: {e.strerror or e}")
  return one_line(e)


def fail(message: str):
  """Prints `error: message` as the last and only line of this process's stderr, exits 2."""
  wd_lib.release_all()
  # Pending orbax/tensorstore coroutines and threads print "Exception ignored" tracebacks when
  # collected or at teardown: collect now, silence their hooks, and skip the teardown (os._exit).
  sys.unraisablehook = lambda *_: None
  threading.excepthook = lambda *_: None
  gc.collect()
  sys.stdout.flush()
  sys.stderr.flush()
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)    # a background thread's last words would land after our line
  os._exit(EXIT_USER_ERROR)


def run_guarded(fn, *args, **kwargs):
  """fn(*args, **kwargs); a user error ends the process: one line, exit 2."""
  try:
    return fn(*args, **kwargs)
  except user_errors() as e:
    fail(describe(e))


# ----------------------------------------------------------------------------- flags


def int_list(flag: str, values) -> list[int]:
  """A DEFINE_list flag's values as integers; a bad one is a ConfigError naming the flag."""
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise cfg.ConfigError(f"--{flag}: expected integers, got {','.join(values)!r}") from e


def _config_flags(flag_values):
  """(name, flag) of every DEFINE_config_file flag."""
  from ml_collections.config_flags import config_flags as impl  # pylint: disable=g-import-not-at-top
  for name, flag in flag_values._flags().items():  # pylint: disable=protected-access
    if isinstance(getattr(flag, "parser", None), impl.ConfigFileFlagParser):
      yield name, flag


def _override_path(e: BaseException) -> str | None:
  """The override being applied when ml_collections raised (its frames hold `field_path`)."""
  for x in _chain(e):
    tb = x.__traceback__
    found = None
    while tb is not None:
      found = tb.tb_frame.f_locals.get("field_path", found)
      tb = tb.tb_next
    if isinstance(found, str):
      return found
  return None


def _config_args(argv) -> list:
  """The `--config=FILE[:arg]` arguments of config-file flags in argv."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  names = [name for name, _ in _config_flags(flags.FLAGS)]
  return [a for a in argv if any(a.startswith(f"--{n}=") for n in names)]


def _flag_error(e: BaseException, argv) -> str:
  """One line for anything raised while parsing flags (config files load during parsing)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  chain = _chain(e)
  config_errors = [x for x in chain if isinstance(x, cfg.ConfigError)]
  if config_errors:
    # the innermost: ml_collections re-raises get_config's error wrapped with its traceback text
    return one_line(config_errors[-1])
  where = (_config_args(argv) or ["--config"])[0]
  path = _override_path(e)
  if isinstance(e, (KeyError, AttributeError)) and path:
    # ml_collections: KeyError("'stepz'\nDid you mean \"steps\" instead of \"stepz\"?")
    key_error = next((x for x in chain if isinstance(x, KeyError)), e)
    text = key_error.args[0] if key_error.args and isinstance(key_error.args[0], str) else str(e)
    key = text.splitlines()[0].strip("'\"") if text else "?"
    hint = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {hint.group(1)!r}?)" if hint else ""
    return f"--config.{path}: unknown config key {key!r}{hint}"
  if isinstance(e, OSError):
    errno_text = _errno_text(str(e))
    return f"{where}: cannot load the config file ({errno_text or one_line(e)})"
  if isinstance(e, flags.Error):
    text = str(e)
    inner = chain[-1]
    if "Error whilst parsing config file" in text and inner is not e:
      # a get_config() that raised: its own exception, not the wrapped traceback text
      return f"{text.split(':', 1)[0]}: {type(inner).__name__}: {one_line(inner)}"
    return one_line(text)
  # anything else raised by a config file while it loads (a SyntaxError, a KeyError)
  return f"{where}: {type(chain[-1]).__name__}: {one_line(chain[-1])}"


def define_config_file(name: str, default: str | None, help_string: str):
  """config_flags.DEFINE_config_file (lock_config=False) whose errors are one line, exit 2.

  A config flag with a default loads it, overrides included, when defined (at import,
  before `run` can catch anything): this catches those errors too."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=False)
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_error(e, sys.argv))


def parse_flags(argv):
  """absl's flag parsing with every failure as one line and exit 2 (absl: 2 lines, exit 1)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_error(e, argv))
  # ml_collections defers a config file that failed to load until first use: fail now.
  for name, flag in _config_flags(flags.FLAGS):
    value = flag.value
    if value is None:
      continue
    try:
      value.keys()
    except OSError as e:
      fail(_flag_error(e, argv))
  return rest


def _orbax_noise(u) -> bool:
  """An "Exception ignored" report from orbax's reads left pending when a damaged checkpoint
  failed (its event loop already closed): expected after a skipped step, and dozens long."""
  if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value):
    return True
  code = getattr(u.object, "cr_code", None)
  return code is not None and "orbax" in code.co_filename


def run(main):
  """absl.app.run(main) with one error path: flags, config files and user errors in main."""
  from absl import app  # pylint: disable=g-import-not-at-top
  default_hook = sys.unraisablehook

  def hook(u):
    if not _orbax_noise(u):
      default_hook(u)

  sys.unraisablehook = hook
  app.run(lambda argv: run_guarded(main, argv), flags_parser=parse_flags)


def define_multihost_flags():
  """Defines --coordinator_address/--num_processes/--process_id; returns initialize().

  Call at import time of a binary; call the returned function first thing in main().
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  coordinator = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  num_processes = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  process_id = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
  timeout = flags.DEFINE_integer("coordinator_timeout_s", 120,  # distributed.TIMEOUT_S (no jax here)
                                 "Multi-host: seconds to wait for the other processes.")

  def initialize():
    # Bad multi-host flags are user errors too: one line, exit 2 (DistributedError), never a hang.
    from memjax.core import distributed  # pylint: disable=g-import-not-at-top  (jax)
    return distributed.initialize(coordinator.value, num_processes.value, process_id.value,
                                  timeout.value)

  return initialize
