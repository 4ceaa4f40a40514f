"""One pure training step, and k of them scanned inside one jitted call."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from memjax.core.state import TrainState


def all_finite(tree) -> jax.Array:
  """True when every float value of `tree` is finite (a bool scalar; True for no floats)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn, tx: optax.GradientTransformation):
  """train_step(state, batch) -> (state, metrics); memory carried forward detached."""

  def train_step(state: TrainState, batch):
    rng = state.step_key()
    (loss, (metrics, memory, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, state.memory, state.aux, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    # The state about to be returned (and maybe saved) must be finite, not only the loss and
    # gradient: lr=inf gives a finite loss and gradient and NaN parameters. The optimizer
    # moments too: a gradient of 1e30 squares to inf in float32 and freezes its parameter.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
              & all_finite(opt_state))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
    if type(grads) is dict:  # pylint: disable=unidiomatic-typecheck  (groups of a frozen+trained system)
      metrics.update({f"grad_norm/{k}": optax.global_norm(g) for k, g in grads.items()})
    # Stateful streams: batch N's memory starts batch N+1, without a gradient path back.
    memory = jax.lax.stop_gradient(memory)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         memory=memory, aux=aux), metrics

  return train_step


def make_multi_step(train_step):
  """Scans `train_step` over a leading axis of k stacked batches; metrics are the last step's
  plus `loss_mean` over the k steps, `finite`: all k steps' losses, gradients, parameters and
  optimizer states were finite (checked here, inside the compiled call), and
  `stop`: some step's metrics asked the loop to stop (System.stop_reason)."""

  def multi_step(state: TrainState, batches):
    state, metrics = jax.lax.scan(train_step, state, batches)
    finite = jnp.all(metrics.pop("finite"))
    last = jax.tree.map(lambda m: m[-1], metrics)
    out = dict(last, loss_mean=metrics["loss"].mean(), finite=finite)
    if "stop" in metrics:
      out["stop"] = jnp.any(metrics["stop"] > 0)
    return state, out

  return multi_step
