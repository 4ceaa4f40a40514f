"""What every binary shares: one-line errors and exit codes for bad input."""
from __future__ import annotations

import sys

from memjax import checkpointing
from memjax import config as cfg

# Errors a user can fix: printed as one line, exit status 2, no traceback.
USER_ERRORS = (cfg.ConfigError, checkpointing.CheckpointError, FileNotFoundError)


def run_guarded(fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
