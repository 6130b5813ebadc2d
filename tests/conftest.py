"""Shared test setup: the `gpu` marker skips cleanly when JAX sees no GPU."""

import jax
import pytest


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.default_backend() is %r)" % jax.default_backend())
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
