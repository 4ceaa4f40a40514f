"""memjax.dcm."""
