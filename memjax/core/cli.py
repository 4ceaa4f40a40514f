"""What every binary shares: one-line errors and exit codes for bad input."""
from __future__ import annotations

import os
import sys

from memjax.core import checkpointing
from memjax.core import config as cfg
from memjax.core import distributed

# Errors a user can fix: printed as one line, exit status 2, no traceback.
USER_ERRORS = (cfg.ConfigError, checkpointing.CheckpointError, FileNotFoundError,
               distributed.DistributedError)


def run_guarded(fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: after a failed restore, orbax/tensorstore threads print
    # "Event loop is closed" tracebacks at shutdown, burying the one line. These errors are
    # raised before anything is written, so nothing is left unsaved.
    os._exit(2)


def define_multihost_flags():
  """Defines --coordinator_address/--num_processes/--process_id; returns initialize().

  Call at import time of a binary; call the returned function first thing in main().
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  coordinator = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  num_processes = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  process_id = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
  timeout = flags.DEFINE_integer("coordinator_timeout_s", distributed.TIMEOUT_S,
                                 "Multi-host: seconds to wait for the other processes.")
  # Bad multi-host flags are user errors too: one line, exit 2 (run_guarded), never a hang.
  return lambda: run_guarded(distributed.initialize, coordinator.value, num_processes.value,
                             process_id.value, timeout.value)
