"""memjax.then."""
