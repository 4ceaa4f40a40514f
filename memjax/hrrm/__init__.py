"""memjax.hrrm."""
