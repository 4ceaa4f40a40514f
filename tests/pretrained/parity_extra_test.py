"""The parity tests' imports: installed but broken fails, not installed skips."""
import importlib.metadata

import pytest

import parity_extra


def test_installed_but_unimportable_is_an_error_not_a_skip(monkeypatch):
  # the distribution's metadata is there (the extra was installed), the module does not load
  monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())
  with pytest.raises(ImportError):
    parity_extra.require("memjax_no_such_module")


def test_not_installed_skips():
  with pytest.raises(pytest.skip.Exception, match="parity extra"):
    parity_extra.require("memjax_no_such_module")


def test_installed_and_importable_returns_the_module():
  assert parity_extra.require("pytest") is pytest
