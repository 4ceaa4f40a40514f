"""memjax.models."""
