"""memjax.memory."""
