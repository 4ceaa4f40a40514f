"""Device mesh and shardings: the batch is split over the `data` axis, params replicated."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Multi-host start (no-op for one process): call before anything touches a device."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def make_mesh(data: int | None = None) -> jax.sharding.Mesh:
  n = jax.device_count() if data is None else data
  if n > jax.device_count():
    raise ValueError(f"data parallelism {n} exceeds the {jax.device_count()} devices available")
  # Explicit axis types on purpose: jax.make_mesh's default changed between versions.
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def shard_batch(batch, mesh, axis: int = 0):
  """Puts each array's `axis` (the batch) across the data axis."""
  def put(x):
    spec = [None] * np.ndim(x)
    spec[axis] = "data"
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))
  return jax.tree.map(put, batch)


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_leading(tree, mesh):
  """Memory state: leaves with a leading batch axis are split over `data`."""
  return jax.tree.map(lambda x: jax.device_put(
      x, NamedSharding(mesh, P("data") if np.ndim(x) else P())), tree)
