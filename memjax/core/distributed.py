"""Device mesh and shardings: the batch is split over the `data` axis, params replicated.

Multi-host (one process per host, `jax.distributed`): every process runs the same program.
Each reads only its rows of every global batch (`local_batches`), `to_global` assembles them
into one global array, and process 0 alone writes files (`is_main`). With one process every
helper here is the plain single-host path.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# Seconds a process waits for the others (connect, agreement) before failing with one line.
TIMEOUT_S = 120


class DistributedError(ValueError):
  """Bad multi-host flags, an unreachable coordinator, or processes that disagree."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = TIMEOUT_S) -> None:
  """Multi-host start (no-op without a coordinator): call before anything touches a device.

  Raises DistributedError (one line, exit 2 under cli.run_guarded) within about `timeout_s`
  when the flags are inconsistent, the coordinator cannot be reached, or the processes were
  started with different --num_processes."""
  if not coordinator_address:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise DistributedError("--num_processes/--process_id need --coordinator_address=host:port")
    return
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator_address={coordinator_address!r} is not host:port")
  if num_processes is None or process_id is None:
    raise DistributedError("--coordinator_address needs --num_processes and --process_id")
  if num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes} must be >= 1")
  if not 0 <= process_id < num_processes:
    raise DistributedError(f"--process_id={process_id} is out of range for "
                           f"--num_processes={num_processes} (0..{num_processes - 1})")
  # CPU devices of different processes talk through gloo (the default has no cross-process
  # collectives); accelerators keep their own, so this is harmless on a GPU host.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    with _raising_connect():
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=timeout_s,
                                 shutdown_timeout_seconds=timeout_s)
  except Exception as e:  # the runtime raises XlaRuntimeError/RuntimeError with a long text
    raise DistributedError(
        f"process {process_id}/{num_processes}: could not join the coordinator at "
        f"{coordinator_address} within {timeout_s} s (unreachable, or not all {num_processes} "
        f"processes arrived: same --num_processes everywhere?){_detail(e)}") from e
  _agree(num_processes, process_id, timeout_s)


@contextlib.contextmanager
def _raising_connect():
  """jax's distributed client, by default, answers a failed connect (no coordinator, or the
  coordinator waiting for processes that never come) with a C++ fatal error that aborts the
  process with a stack dump. Given a Python callback instead, connect() raises, and the
  binary can print one line and exit 2. Scoped to initialize(): later failures (a peer
  dying mid-run) keep jax's default, which ends this process too rather than hang."""
  from jax._src import distributed as jd  # pylint: disable=g-import-not-at-top
  make = jd._jax.get_distributed_runtime_client  # pylint: disable=protected-access
  if "missed_heartbeat_callback" not in (make.__doc__ or ""):
    yield  # another jax: keep its default
    return
  jd._jax.get_distributed_runtime_client = functools.partial(  # pylint: disable=protected-access
      make, missed_heartbeat_callback=lambda *_: None)
  try:
    yield
  finally:
    jd._jax.get_distributed_runtime_client = make  # pylint: disable=protected-access


def _detail(e: Exception) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  # bad_cast is the callback's own noise (absl::Status has no Python type), not a reason.
  return f": {lines[0][:200]}" if lines and "bad_cast" not in lines[0] else ""


def _agree(num_processes: int, process_id: int, timeout_s: int) -> None:
  """Every process publishes its --num_processes and reads everyone's: a process started with
  another count fails here, in every process, instead of deadlocking in the first collective."""
  from jax._src import distributed as jd  # pylint: disable=g-import-not-at-top
  client = jd.global_state.client
  client.key_value_set(f"memjax/num_processes/{process_id}", str(num_processes))
  seen = {process_id: num_processes}
  for i in range(num_processes):
    if i == process_id:
      continue
    try:
      seen[i] = int(client.blocking_key_value_get(f"memjax/num_processes/{i}", timeout_s * 1000))
    except Exception:  # timed out: that process never joined with this count
      seen[i] = None
    if seen[i] != num_processes:
      break  # one disagreement is enough; waiting on the rest would only delay the error
  if any(n != num_processes for n in seen.values()):
    others = ", ".join(f"process {i}: {n if n is not None else 'no answer'}"
                       for i, n in sorted(seen.items()) if i != process_id)
    # Leave together: the shutdown barrier keeps process 0 (host of the coordinator) alive
    # until the others have seen the disagreement too, so each prints its own line.
    jax.distributed.shutdown()
    raise DistributedError(f"process {process_id} was started with --num_processes="
                           f"{num_processes} but the others disagree ({others})")


def is_main() -> bool:
  """True in the one process that writes files (process 0; the only one on a single host)."""
  return jax.process_index() == 0


_calls = [0]  # on_main calls so far: every process makes them in the same order


def on_main(fn, *args, timeout_s: int = TIMEOUT_S, **kwargs):
  """Runs fn in process 0 only (a workdir lock, a first-time setup); returns its result there
  and None elsewhere. If it raises in process 0, every other process raises DistributedError
  with the same message, so the error is one line everywhere instead of a hang later."""
  if jax.process_count() == 1:
    return fn(*args, **kwargs)
  from jax._src import distributed as jd  # pylint: disable=g-import-not-at-top
  client = jd.global_state.client
  key = f"memjax/on_main/{_calls[0]}"
  _calls[0] += 1
  if is_main():
    try:
      out = fn(*args, **kwargs)
    except Exception as e:
      client.key_value_set(key, f"error:{str(e).splitlines()[0] if str(e) else type(e).__name__}")
      raise
    client.key_value_set(key, "ok")
    return out
  got = client.blocking_key_value_get(key, timeout_s * 1000)
  if got.startswith("error:"):
    raise DistributedError(f"process 0: {got[len('error:'):]}")
  return None


def data_parallel(requested: int = 1) -> int:
  """The data-parallel width: `requested` on one host; every device of every process when
  several processes run (the same config runs on one workstation and on a cluster)."""
  return jax.device_count() if jax.process_count() > 1 else requested


def make_mesh(data: int | None = None) -> jax.sharding.Mesh:
  n = jax.device_count() if data is None else data
  if n > jax.device_count():
    raise ValueError(f"data parallelism {n} exceeds the {jax.device_count()} devices available")
  # Explicit axis types on purpose: jax.make_mesh's default changed between versions.
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def data_mesh(requested: int = 1) -> jax.sharding.Mesh | None:
  """The loop's mesh: None for one device in one process (no sharding at all)."""
  n = data_parallel(requested)
  return make_mesh(n) if n > 1 else None


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def process_rows(mesh, batch_size: int) -> tuple[int, int]:
  """[start, stop): the rows of a global batch that live on this process's devices.

  Read from the sharding itself, so the rows a process reads are exactly the rows
  `make_array_from_process_local_data` expects from it."""
  if mesh is None:
    return 0, batch_size
  index = batch_sharded(mesh).addressable_devices_indices_map((batch_size,))
  starts = sorted({s[0].start or 0 for s in index.values()})
  stops = sorted({batch_size if s[0].stop is None else s[0].stop for s in index.values()})
  lo, hi = starts[0], stops[-1]
  if hi - lo != sum(b - a for a, b in zip(starts, stops)):
    raise ValueError(f"this process's rows of the batch are not contiguous: {index}")
  return lo, hi


def local_batches(task, split: str, batch_size: int, seed: int, mesh=None):
  """The task's resumable batch iterator, reduced to this process's rows of each global batch.

  A task whose `batches` takes `rows=(start, stop)` builds only those examples; any other
  task's global batch is built and sliced (same iterator, so the state still resumes)."""
  lo, hi = process_rows(mesh, batch_size)
  if (lo, hi) == (0, batch_size):
    return task.batches(split, batch_size, seed)
  if "rows" in inspect.signature(task.batches).parameters:
    return task.batches(split, batch_size, seed, rows=(lo, hi))
  return task.batches(split, batch_size, seed).map(
      lambda b: jax.tree.map(lambda x: x[lo:hi], b))


def to_global(local, mesh, axis: int = 0):
  """This process's rows (from `local_batches`) -> global arrays split over `data` on `axis`.

  Without a mesh the batch is returned as it is; with one process this is `shard_batch`."""
  if mesh is None:
    return local
  if jax.process_count() == 1:
    return shard_batch(local, mesh, axis)
  n = jax.process_count()

  def put(x):
    x = np.asarray(x)
    spec = [None] * x.ndim
    spec[axis] = "data"
    shape = list(x.shape)
    shape[axis] *= n  # every process holds the same number of rows
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(*spec)), x, tuple(shape))
  return jax.tree.map(put, local)


def shard_batch(batch, mesh, axis: int = 0):
  """Puts each array's `axis` (the batch) across the data axis (one process: global = local)."""
  def put(x):
    spec = [None] * np.ndim(x)
    spec[axis] = "data"
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))
  return jax.tree.map(put, batch)


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_leading(tree, mesh):
  """Memory state: leaves with a leading batch axis are split over `data`.

  Every process holds the same full value (a fresh or restored state), so device_put onto a
  mesh that spans processes keeps each process's own rows."""
  return jax.tree.map(lambda x: jax.device_put(
      x, NamedSharding(mesh, P("data") if np.ndim(x) else P())), tree)


def state_shardings(state, mesh):
  """A TrainState's shardings on `mesh`: `memory` split over `data` on its leading (batch)
  axis like the batches, everything else (params, optimizer, step, rng, aux) replicated."""
  def rows(x):
    return NamedSharding(mesh, P("data") if np.ndim(x) else P())
  out = jax.tree.map(lambda _: replicated(mesh), state)
  return out.replace(memory=jax.tree.map(rows, state.memory))


def place(state, mesh):
  """A concrete TrainState (the same value in every process) put onto `mesh`; an abstract one
  (ShapeDtypeStructs, to restore against) given the same shardings. No mesh: unchanged."""
  if mesh is None:
    return state
  shardings = state_shardings(state, mesh)
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        state, shardings)
  return jax.device_put(state, shardings)


class Silent:
  """Stands in for a writer or progress bar in processes other than 0: every call does nothing."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None
