"""memjax: memory-augmented transformers in JAX/Flax, each memory shown to be used."""

__version__ = "0.1.0"
