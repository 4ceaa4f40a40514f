"""memjax.models.pretrained."""
