"""Phase 1a in its users' setting: SQuAD 2.0, 100 pairs, K=32, 800 steps, up to 5 restarts.

Needs SQuAD 2.0 prepared as array_record in --config.data.data_dir and a GPU for a 0.5B+ model:
  python experiments/phase1a.py --config=configs/phase1a_squad.py --workdir=/tmp/p1a_squad \
      --config.model=/path/to/Qwen2.5-0.5B-Instruct --config.data.data_dir=/path/to/tfds
Sweep K (convergence by K): --config=configs/phase1a_squad.py:16 (K from the argument), one
workdir per K, then `experiments/analyze_phase1a.py --workdir=DIR_K4,DIR_K16,...`.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_phase1a", os.path.join(os.path.dirname(os.path.abspath(__file__)), "phase1a.py"))
phase1a = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(phase1a)


def get_config(arg: str | None = None):
  c = phase1a.get_config()
  c.model = "gemma3-270m"
  c.data.source = "squad_v2"
  c.data.num_examples = 100
  c.data.max_question_tokens = 48
  c.data.max_answer_tokens = 24
  c.data.max_context_tokens = 512
  c.stm.num_slots = int(arg) if arg else 32
  c.train.steps = 800
  c.num_restarts = 5
  c.train.batch_size = 16
  c.optim.schedule = "constant"
  return c
