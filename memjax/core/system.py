"""What the generic training loop needs from a model family."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax

Params = Any
Batch = dict
Memory = Any


@dataclasses.dataclass(frozen=True)
class System:
  """Pure functions of one model family; the loop owns state, data and checkpoints.

  init(rng) -> params
  loss(params, batch, memory, rng) -> (loss, (metrics, memory))   jittable, pure
  evaluate(params, batch, mode) -> {"correct", "count", "loss"[, "memory": f32[B, M]]}
      mode in memjax.core.yardstick.MODES; raise NotImplementedError for an undefined mode.
  init_memory(batch_size) -> memory carried across batches (() when none)
  extra_results(params, batches) -> dict merged into results.json
  """
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, Memory, jax.Array], tuple[jax.Array, tuple[dict, Memory]]]
  evaluate: Callable[[Params, Batch, str], dict]
  init_memory: Callable[[int], Memory] = lambda batch_size: ()
  extra_results: Callable[[Params, Iterator[Batch]], dict] | None = None
  graphdef: Any = None
