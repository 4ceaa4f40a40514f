"""Imports for the parity tests: skip where the `parity` extra of setup.py is not installed,
fail where it is and the import breaks (a broken torch must not pass as a skip)."""
import importlib
import importlib.metadata

import pytest


def require(module: str, dist: str | None = None):
  try:
    importlib.metadata.distribution(dist or module)
  except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"{dist or module} is not installed (the parity extra of setup.py)",
                allow_module_level=True)
  return importlib.import_module(module)   # installed: an ImportError here is a failure
