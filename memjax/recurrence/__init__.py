"""memjax.recurrence."""
