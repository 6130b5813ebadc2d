"""Shared test setup: the `gpu` marker skips cleanly when JAX sees no GPU; the CLIs' persistent compilation cache
goes to a temporary directory, not the user's cache, and is switched off again after each test that a CLI run
switched it on in; each module's compiled programs are freed after it."""

import os
import tempfile

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

# Before any test runs a CLI (they switch the cache on under $XDG_CACHE_HOME/liveedit_jax by default).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="liveedit-test-cache-")

# What `stream.enable_compile_cache` sets.
_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True)
def _compilation_cache_restored():
  """A CLI run in the test process (stream.main, evaluate.main, ...) switches JAX's persistent compilation cache on
  for the whole process; after the test it is off again, so later tests compile as they would alone and write no
  programs to disk (a training gradient's executable written there once aborted the suite on XLA:CPU)."""
  before = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  yield
  if any(getattr(jax.config, name) != value for name, value in before.items()):
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.default_backend() is %r)" % jax.default_backend())
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_freed():
  """Frees the module's compiled programs after it. With the whole suite's programs kept in one process, XLA:CPU
  crashed late in the run (an abort, then a segfault, in tests that pass alone); freed per module, the suite ran
  through. Each executable holds its own memory mappings (about 6 for a small one, measured); the exact limit that
  was hit is not pinned down."""
  yield
  jax.clear_caches()

