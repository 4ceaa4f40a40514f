"""memjax.training."""
