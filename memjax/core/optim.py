"""Optimizer: AdamW with warmup-cosine schedule and global-norm clipping."""
import jax
import optax

# Top-level parameter subtrees trained beside the model in the same state but compared against
# it (HRSA-TRM's no-memory LM reference): clipped on their own norm, so that the model's
# gradients never scale their step.
APART = ("reference",)


def _head(path) -> str:
  """The top-level key a leaf sits under ('' for none)."""
  k = path[0] if path else None
  return str(getattr(k, "key", getattr(k, "name", "")))


def clip_by_global_norm_apart(max_norm: float, apart=APART) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm`, except that each top-level subtree named in `apart` is
  clipped on its own norm and the rest on theirs. With no such subtree it is that transform
  itself (same state, same numbers)."""
  base = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    heads = jax.tree_util.tree_map_with_path(lambda p, _: _head(p), updates)
    names = set(jax.tree.leaves(heads))
    groups = [n for n in apart if n in names]
    if not groups:
      return base.update(updates, state, params)
    out = None
    for group in [None] + groups:
      keep = (lambda h, g=group: h == g) if group else (lambda h: h not in groups)
      # Zeros outside the group add nothing to its norm: base.update clips the group alone.
      part = jax.tree.map(lambda u, h, k=keep: u if k(h) else jax.numpy.zeros_like(u),
                          updates, heads)
      clipped, _ = base.update(part, state, params)
      out = clipped if out is None else jax.tree.map(
          lambda o, c, h, k=keep: c if k(h) else o, out, clipped, heads)
    return out, state

  return optax.GradientTransformation(base.init, update)


def make_optimizer(t) -> optax.GradientTransformation:
  """`t` is the config's `train` section."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=t.warmup_steps,
      decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.lr * t.get("end_lr_fraction", 0.1))
  chain = []
  if t.clip_norm:
    chain.append(clip_by_global_norm_apart(t.clip_norm))
  chain.append(optax.adamw(schedule, b1=t.get("b1", 0.9), b2=t.get("b2", 0.98),
                           weight_decay=t.weight_decay))
  return optax.chain(*chain)
