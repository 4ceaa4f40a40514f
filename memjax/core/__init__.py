"""memjax.core."""
