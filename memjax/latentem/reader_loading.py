"""The reader LLM by name, loaded once per process, and the checks a reader must pass.

Names: "gemma3-270m" (the embedded Gemma 3 270M), a Qwen2/Gemma3 HF folder or .gguf path,
or "tiny:gemma3" / "tiny:qwen2" (a tiny random decoder with a character tokenizer, for tests).
"""
from __future__ import annotations

import functools
import inspect

from memjax import pretrained
from memjax.core.config import ConfigError


@functools.lru_cache(maxsize=4)
def load(name: str, dtype: str = "float32") -> pretrained.Pretrained:
  if name.startswith("tiny:"):
    return pretrained.make_tiny(name.split(":", 1)[1], seed=0)
  try:
    return pretrained.load(name, dtype=dtype)
  except pretrained.ModelLoadError as e:
    raise ConfigError(f"model.reader: {e}") from None


def check_reader(model, field: str = "model.reader") -> None:
  """The reader must take input embeddings (the latents are injected as embeddings)."""
  call = getattr(model, "__call__", None)
  params = inspect.signature(call).parameters if call is not None else {}
  if "embeds_BxTxD" not in params or not callable(getattr(model, "embed", None)):
    raise ConfigError(f"{field}: {type(model).__name__} does not take input embeddings "
                      "(needs __call__(embeds_BxTxD=...) and embed(tokens)); latents cannot be "
                      "injected into it")
