"""Tasks by name: config.task.name -> Task.

A Task knows its vocabulary, its chance accuracy, and yields batches (dicts of
numpy arrays) from a grain pipeline whose state checkpoints with the model.
Entries are "module:Class"; the class is built as Class(config.task) and may
define validate(task_config) (a staticmethod) raising ConfigError.
"""
from __future__ import annotations

import importlib

from memjax.core import config as cfg

TASKS = {
    "hrsa_retrieval": "memjax.hrsa.tasks:HRSARetrievalTask",
    "assoc_recall": "memjax.data.recall:AssocRecall",
    "passkey": "memjax.data.recall:Passkey",
    "kv_recall": "memjax.data.recall:KVRecall",
    "latentem_kv": "memjax.latentem.task:LatentemKV",
    "pointer_roots": "memjax.hrrm.tasks:PointerRoots",
    "plan_traces": "memjax.hrrm.tasks:PlanTraces",
    "arith_scratchpad": "memjax.hrrm.tasks:ArithmeticScratchpad",
}


def task_class(name: str):
  cfg.require(name in TASKS, "task.name", f"unknown task {name!r}; choose one of {sorted(TASKS)}")
  path, _, cls = TASKS[name].partition(":")
  return getattr(importlib.import_module(path), cls)


def validate(config) -> None:
  klass = task_class(cfg.get(config, "task.name"))
  if hasattr(klass, "validate"):
    klass.validate(config.task)


def make_task(task_config):
  return task_class(task_config.name)(task_config)
