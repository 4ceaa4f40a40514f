"""Config validation shared by every experiment: one-line errors naming the field."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import ml_collections

FLOAT32_MAX = 3.4028234663852886e38   # numpy.finfo(numpy.float32).max, without importing numpy
from memjax.core.precision import COMPUTE_DTYPES


class ConfigError(ValueError):
  """A config value is wrong; the message starts with the dotted field name."""


def get(config: ml_collections.ConfigDict, field: str, default: Any = ...) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      if default is ...:
        raise ConfigError(f"{field}: missing")
      return default
    node = node[part]
  return node


def require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ConfigError(f"{field}: {message}")


def positive(config, *fields: str) -> None:
  for f in fields:
    v = get(config, f)
    require(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, f,
            f"must be positive, got {v!r}")


def non_negative(config, *fields: str) -> None:
  for f in fields:
    v = get(config, f)
    require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f,
            f"must be >= 0, got {v!r}")


def one_of(config, field: str, choices: Iterable[str]) -> None:
  v = get(config, field)
  choices = sorted(choices)
  require(v in choices, field, f"unknown value {v!r}; choose one of {choices}")


def divides(config, small: str, big: str) -> None:
  a, b = get(config, small), get(config, big)
  require(b % a == 0, small, f"{a} does not divide {big}={b}")


def floats_representable(config, prefix: str = "") -> None:
  """Every float in the config is finite and fits float32 (the training dtype): lr=inf, or
  1e39 (inf in float32), would pass `positive` and turn the parameters into NaN."""
  for key, v in config.items():
    field = f"{prefix}{key}"
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      floats_representable(v, field + ".")
    elif isinstance(v, float):
      require(math.isfinite(v) and abs(v) <= FLOAT32_MAX, field,
              f"must be finite and representable in float32, got {v!r}")


def validate_train(config) -> None:
  """The `train` section every experiment shares."""
  floats_representable(config)
  positive(config, "train.steps", "train.batch_size", "train.lr", "train.log_every",
           "train.eval_batches", "train.steps_per_call")
  non_negative(config, "train.warmup_steps", "train.weight_decay", "train.clip_norm",
               "train.checkpoint_every", "train.seed")
  require(get(config, "train.warmup_steps") <= get(config, "train.steps"), "train.warmup_steps",
          "must not exceed train.steps")
  divides(config, "train.steps_per_call", "train.steps")
  ckpt = get(config, "train.checkpoint_every")
  require(ckpt == 0 or ckpt % get(config, "train.steps_per_call") == 0, "train.checkpoint_every",
          "must be a multiple of train.steps_per_call (or 0 for no checkpoints)")
  mesh = get(config, "train.data_parallel", 1)
  require(isinstance(mesh, int) and mesh >= 1, "train.data_parallel", f"must be >= 1, got {mesh!r}")
  for f in ("train.b1", "train.b2"):
    v = get(config, f, 0.9)
    require(isinstance(v, (int, float)) and 0 <= v < 1, f, f"must be in [0, 1), got {v!r}")
  end = get(config, "train.end_lr_fraction", 0.1)   # a workdir's config.json may predate it
  require(isinstance(end, (int, float)) and 0 <= end <= 1, "train.end_lr_fraction",
          f"must be in [0, 1], got {end!r}")
  src = get(config, "train.init_from", "")
  require(isinstance(src, str), "train.init_from", f"must be a workdir path, got {src!r}")
  dt = get(config, "train.compute_dtype", "float32")   # absent in configs saved before it
  require(dt in COMPUTE_DTYPES, "train.compute_dtype",
          f"unknown value {dt!r}; choose one of {list(COMPUTE_DTYPES)}")


def train_defaults() -> ml_collections.ConfigDict:
  """The shared `train` section with defaults; configs override what they need."""
  return ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=32,
      lr=3e-3,
      warmup_steps=100,
      weight_decay=0.0,
      clip_norm=1.0,
      seed=0,
      log_every=50,
      steps_per_call=10,       # optimizer steps scanned inside one jitted call
      checkpoint_every=500,    # 0: never
      keep_checkpoints=2,
      eval_batches=8,
      eval_batch_size=64,
      data_parallel=1,         # devices on the mesh `data` axis
      b1=0.9,                  # AdamW moments
      b2=0.98,
      end_lr_fraction=0.1,     # the cosine decays from lr to lr * this at step `steps`
      tensorboard=True,        # event files in <workdir>/tensorboard beside metrics.jsonl
      compute_dtype="float32",  # or "bfloat16": f32 params, bf16 forward/backward (core.precision)
      init_from="",            # a workdir whose newest checkpoint's params start a fresh run
      init_skip=(),            # regexes of parameter names init_from leaves at their fresh init
  ))


def variant(arg: str | None, choices) -> str:
  """The `arg` of `--config=configs/x.py:arg`, checked: '' when absent, else one of `choices`.

  Every config's get_config starts with this, so a misspelt variant (`:tyni`) is a one-line
  error instead of a silent run of the default config."""
  arg = arg or ""
  require(arg in choices, "config argument",
          f"unknown variant {arg!r}; choose one of {sorted(choices)}")
  return arg


def typed(cls, section: ml_collections.ConfigDict, field: str = "model",
          ignore: Iterable[str] = ("name",)):
  """The frozen dataclass `cls` built from a config section; an unknown key is a one-line
  error naming it (a typo in `--config.model.capacty=8` never runs silently)."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(section.keys()) - names - set(ignore))
  require(not unknown, f"{field}.{unknown[0]}" if unknown else field,
          f"unknown key; {cls.__name__} has {sorted(names)}")
  return cls(**{k: section[k] for k in section.keys() if k in names})
