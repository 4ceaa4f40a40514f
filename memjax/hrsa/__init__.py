"""memjax.hrsa."""
