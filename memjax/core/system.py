"""The System contract: what the loop and the yardstick need from a design."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax

Params = Any
Batch = dict
Memory = Any     # a pytree following memjax.core.memory's protocol
Aux = Any        # non-memory training state (guard counters): its own slot, never the memory's


@dataclasses.dataclass(frozen=True)
class System:
  """Pure functions of one design; the loop owns state, data and checkpoints.

  init(rng) -> params
  loss(params, batch, memory, aux, rng) -> (loss, (metrics, memory, aux))   jittable, pure.
      `memory` is carried across training batches (contiguous streams), `aux` is any
      other training state. metrics["stop"] > 0 asks the loop to stop: it raises
      TrainingStopped with `stop_reason`.
  ingest(params, batch) -> memory       the memory the batch's context writes.
  answer(params, batch, memory) -> {"correct", "count", "loss"}   answers from `memory`;
      memory None means the model never had one (the yardstick's no_memory baseline).
  oracle(params, batch) -> {"correct", "count", "loss"}   the information given directly,
      where the task defines it (None: no oracle).
  The yardstick builds every mode (memory, zeroed, shuffled, no_memory, oracle) from these;
  a system without a memory leaves ingest None and is scored on `answer(params, batch, None)`.
  init_memory(batch_size) -> memory carried across batches (() when none); init_aux() -> aux.
  extra_results(params, batches) -> dict merged into results.json.
  frozen: weights the system reads but never trains (a frozen pretrained reader), or None.
      They stay out of params, so they get no gradient, no optimizer state and no checkpoint;
      the loop and the yardstick pass them into their jitted functions as an argument (never a
      baked-in constant) and every function above then receives them as `frozen=` (see `bind`).
  """
  init: Callable[[jax.Array], Params]
  loss: Callable[..., tuple[jax.Array, tuple[dict, Memory, Aux]]]
  answer: Callable[[Params, Batch, Memory], dict]
  ingest: Callable[[Params, Batch], Memory] | None = None
  oracle: Callable[[Params, Batch], dict] | None = None
  init_memory: Callable[[int], Memory] = lambda batch_size: ()
  init_aux: Callable[[], Aux] = lambda: ()
  extra_results: Callable[[Params, Iterator[Batch]], dict] | None = None
  stop_reason: str = "the system asked to stop"
  graphdef: Any = None
  frozen: Any = dataclasses.field(default=None, compare=False)  # not hashed: a jit argument


def bind(system: System, frozen: Any) -> System:
  """The system with `frozen` (usually a tracer of `system.frozen`) passed as `frozen=` to its
  functions; the system itself when it has no frozen weights."""
  if system.frozen is None:
    return system
  part = lambda f: None if f is None else functools.partial(f, frozen=frozen)
  return dataclasses.replace(system, loss=part(system.loss), answer=part(system.answer),
                             ingest=part(system.ingest), oracle=part(system.oracle), frozen=None)
