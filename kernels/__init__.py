"""Pallas kernels, each beside its jnp reference (installed as memjax.kernels)."""
