"""Model families by name: config.model.name -> make_system(config, task) -> System.

Entries are "module" or "module:factory" (factory defaults to make_system); a
module may define validate(config), called before anything compiles. Modules
are imported lazily so a binary pays only for the family it runs.
"""
from __future__ import annotations

import importlib

from memjax.core import config as cfg

SYSTEMS = {
    "hrsa_trm": "memjax.hrsa.system:make_system",
    "then": "memjax.then.system:make_system",
    "latentem": "memjax.latentem.system:make_system",
    "hrm": "memjax.hrrm.system:make_system",
    "hrrm_planner": "memjax.hrrm.system:make_system",
    "hrrm_reasoner": "memjax.hrrm.system:make_system",
    "hrrm_memory": "memjax.hrrm.system:make_system",
}


def _entry(name: str):
  cfg.require(name in SYSTEMS, "model.name",
              f"unknown model {name!r}; choose one of {sorted(SYSTEMS)}")
  path, _, factory = SYSTEMS[name].partition(":")
  return importlib.import_module(path), factory or "make_system"


def validate(config) -> None:
  mod, _ = _entry(cfg.get(config, "model.name"))
  if hasattr(mod, "validate"):
    mod.validate(config)


def make_system(config, task):
  mod, factory = _entry(config.model.name)
  return getattr(mod, factory)(config, task)
