"""Phase 1a on a random tiny Qwen2 decoder: the whole pipeline in seconds (tests, smoke runs).

  python experiments/phase1a.py --config=configs/phase1a_tiny.py --workdir=/tmp/p1a_tiny
`arg` picks the tiny architecture: --config=configs/phase1a_tiny.py:gemma3
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_phase1a", os.path.join(os.path.dirname(os.path.abspath(__file__)), "phase1a.py"))
phase1a = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(phase1a)


def get_config(arg: str | None = None):
  if arg not in (None, "", "qwen2", "gemma3"):
    raise ValueError(f"configs/phase1a_tiny.py:ARCH takes qwen2 or gemma3, got {arg!r}")
  c = phase1a.get_config()
  c.model = f"tiny:{arg or 'qwen2'}"
  c.data.num_examples = 4
  c.stm.num_slots = 4
  c.train.steps = 8
  c.num_restarts = 1
  c.train.batch_size = 4
  c.data.max_context_tokens = 64
  return c
