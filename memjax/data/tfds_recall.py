"""Associative recall as a tensorflow-datasets builder (array_record files, no tensorflow).

  builder = make_builder(task, data_dir, num_train=..., num_eval=...)   # task: a SyntheticTask
  builder.download_and_prepare(file_format="array_record")
  source = tfds.data_source(builder.name, data_dir=data_dir, ...)   # random access, grain-ready

The examples are byte-identical to the in-memory generator's (same seed, same index): the
builder writes `task.example_at(split, seed, i)` of the task object it is given.
"""
from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds


class AssocRecallConfig(tfds.core.BuilderConfig):
  def __init__(self, *, task: dict, example_at, seed: int, num_train: int, num_eval: int, **kw):
    super().__init__(**kw)
    self.task, self.example_at = task, example_at
    self.seed, self.num_train, self.num_eval = seed, num_train, num_eval


class MemjaxAssocRecall(tfds.core.GeneratorBasedBuilder):
  """Multi-segment associative recall, generated deterministically."""

  VERSION = tfds.core.Version("1.1.0")   # 1.1.0: held-out eval bindings

  def _info(self) -> tfds.core.DatasetInfo:
    length = self.builder_config.task["segment_len"] * self.builder_config.task["num_segments"]
    feat = lambda: tfds.features.Tensor(shape=(length,), dtype=np.int32)
    return tfds.core.DatasetInfo(
        builder=self,
        description="memjax associative recall: " + json.dumps(self.builder_config.task),
        disable_shuffling=True,   # index i stays example i, as in the generator
        features=tfds.features.FeaturesDict({"inputs": feat(), "targets": feat(), "answer": feat()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "eval": self._generate_examples("eval", c.num_eval)}

  def _generate_examples(self, split: str, n: int):
    c = self.builder_config
    for i in range(n):
      yield i, c.example_at(split, c.seed, i)


def config_name(task: dict, seed: int, num_train: int, num_eval: int) -> str:
  """A config name that changes whenever the data would."""
  import hashlib  # pylint: disable=g-import-not-at-top
  key = json.dumps([task, seed, num_train, num_eval], sort_keys=True)
  return "c" + hashlib.sha1(key.encode()).hexdigest()[:12]


def make_builder(task, data_dir: str, *, seed: int = 0, num_train: int = 10_000,
                 num_eval: int = 1_000) -> MemjaxAssocRecall:
  spec = {k: v for k, v in task.c.to_dict().items() if k not in ("source", "data_dir")}
  name = config_name(spec, seed, num_train, num_eval)
  bc = AssocRecallConfig(name=name, task=spec, example_at=task.example_at, seed=seed,
                         num_train=num_train, num_eval=num_eval)
  return MemjaxAssocRecall(config=bc, data_dir=data_dir)


def prepare(task, data_dir: str, **kw) -> MemjaxAssocRecall:
  builder = make_builder(task, data_dir, **kw)
  builder.download_and_prepare(file_format="array_record")
  return builder


def data_source(builder: MemjaxAssocRecall, split: str):
  """Random-access source over the array_record files (what grain reads)."""
  return builder.as_data_source(split=split)
