"""Optimizer: AdamW with warmup-cosine schedule and global-norm clipping."""
import optax


def make_optimizer(t) -> optax.GradientTransformation:
  """`t` is the config's `train` section."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=t.warmup_steps,
      decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.lr * t.get("end_lr_fraction", 0.1))
  chain = []
  if t.clip_norm:
    chain.append(optax.clip_by_global_norm(t.clip_norm))
  chain.append(optax.adamw(schedule, b1=t.get("b1", 0.9), b2=t.get("b2", 0.98),
                           weight_decay=t.weight_decay))
  return optax.chain(*chain)
