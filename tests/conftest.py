"""Shared test setup: the `gpu` marker skips cleanly when JAX sees no GPU; the CLIs' persistent compilation cache
goes to a temporary directory, not the user's cache."""

import os
import tempfile

import jax
import pytest

# Before any test runs a CLI (they switch the cache on under $XDG_CACHE_HOME/liveedit_jax by default).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="liveedit-test-cache-")


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.default_backend() is %r)" % jax.default_backend())
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
