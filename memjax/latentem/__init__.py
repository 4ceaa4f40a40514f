"""memjax.latentem."""
