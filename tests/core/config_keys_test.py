"""Every key the code reads from `train` exists in its defaults (an override of a key missing
from the defaults is an unknown-key error), and float hyperparameters fit float32."""
import ast
import glob
import importlib
import os
import re

import pytest

from memjax.core import config as cfg
from memjax.core import registry
from memjax.core import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _is_train(node, train_names) -> bool:
  """`x.train`, or a name bound to one (`t = config.train`), or `t` given as a train section."""
  if isinstance(node, ast.Attribute) and node.attr == "train":
    return True
  return isinstance(node, ast.Name) and node.id in train_names


def train_reads(path: str) -> set:
  """Keys read from a train section in one module: `t.get("k")`, `t.k`, `cfg.get(c, "train.k")`."""
  tree = ast.parse(open(path).read())
  keys = set()
  for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Module))]:
    names = set()
    for n in ast.walk(fn):
      if isinstance(n, ast.Assign) and _is_train(n.value, ()) and isinstance(n.targets[0], ast.Name):
        names.add(n.targets[0].id)
    if isinstance(fn, ast.FunctionDef) and fn.name == "make_optimizer":
      names.add(fn.args.args[0].arg)                      # documented: `t` is the train section
    for n in ast.walk(fn):
      if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
          and _is_train(n.func.value, names) and n.args and isinstance(n.args[0], ast.Constant)):
        keys.add(n.args[0].value)
      elif isinstance(n, ast.Attribute) and _is_train(n.value, names) and n.attr not in (
          "get", "update", "items", "keys", "values", "copy_and_resolve_references", "lock"):
        keys.add(n.attr)
      elif isinstance(n, ast.Call):       # cfg.get(config, "train.k"), positive(config, "train.k")
        for a in n.args:
          if isinstance(a, ast.Constant) and isinstance(a.value, str) and \
              re.fullmatch(r"train\.[a-z_][a-z_0-9]*", a.value):
            keys.add(a.value.split(".", 1)[1])
  return keys


SOURCES = sorted(glob.glob(os.path.join(ROOT, "memjax", "**", "*.py"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "experiments", "*.py")))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
def _loop_config(name) -> bool:
  """A config of the generic training loop (a registered model), not phase 1a's own."""
  c = importlib.import_module(f"configs.{name}").get_config()
  model = c.get("model")
  return "train" in c and hasattr(model, "get") and model.get("name") in registry.SYSTEMS


TRAIN_CONFIGS = [n for n in CONFIGS if _loop_config(n)]


def test_the_walk_finds_the_known_reads():
  # The reads that crashed when overridden (issue 11), found where they are.
  assert {"b1", "b2", "end_lr_fraction"} <= train_reads(os.path.join(ROOT, "memjax/core/optim.py"))
  assert {"tensorboard", "keep_checkpoints"} <= train_reads(os.path.join(ROOT, "memjax/core/loop.py"))


def test_every_train_key_read_by_the_code_is_in_the_defaults():
  defaults = set(cfg.train_defaults())
  missing = {}
  for path in SOURCES:
    for key in train_reads(path) - defaults:
      missing.setdefault(key, []).append(os.path.relpath(path, ROOT))
  assert not missing, f"read from config.train but absent from train_defaults(): {missing}"


def test_the_training_configs_are_found():
  assert {"then_recall", "hrsa_retrieval", "hrrm_planner"} <= set(TRAIN_CONFIGS)


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_every_config_with_a_train_section_has_every_default_key(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert set(cfg.train_defaults()) <= set(config.train), sorted(
      set(cfg.train_defaults()) - set(config.train))


@pytest.mark.parametrize("field, value", [("lr", float("inf")), ("lr", 1e39), ("lr", float("nan")),
                                          ("weight_decay", float("inf")), ("clip_norm", 1e40)])
def test_float_hyperparameters_must_fit_float32(field, value):
  c = importlib.import_module("configs.then_recall").get_config("tiny")
  c.train[field] = value
  with pytest.raises(cfg.ConfigError, match=f"train.{field}: must be finite and representable"):
    loop.validate(c)


def test_largest_float32_lr_passes_validation():
  c = importlib.import_module("configs.then_recall").get_config("tiny")
  c.train.lr = 3e38      # finite in float32: validation passes, the step's check catches it
  loop.validate(c)
