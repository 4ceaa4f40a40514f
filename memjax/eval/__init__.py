"""memjax.eval."""
