"""Timing helpers for benchmarks: warm-up, then the median of repeated, synchronised calls."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[..., Any], *args: Any, warmup: int = 2, iters: int = 10) -> dict[str, float]:
  """Median / min wall-clock ms of `fn(*args)`, each call synchronised with `block_until_ready`."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": iters}


def compile_seconds(jitted: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """Lowers and compiles `jitted` for `args`; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def peak_memory_gib() -> float | None:
  """Peak bytes in use on the first device since start, in GiB (None where the backend does not report it)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30
