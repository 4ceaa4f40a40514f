"""Test setup: 4 CPU devices for sharding tests, float32 matmuls at full precision, and XLA's
cheap compile mode (tests run tiny shapes, so compiling costs more than running; subprocesses
the tests start inherit it). `JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest` tests the optimised
compile; .ci/run's slow line runs with it."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_default_matmul_precision", "highest")
