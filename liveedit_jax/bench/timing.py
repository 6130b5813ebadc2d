"""Timing helpers for benchmarks: warm-up, then the median and minimum of repeated, synchronised calls."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[..., Any], *args: Any, warmup: int = 2, iters: int = 10) -> dict[str, float]:
  """Median / min wall-clock ms of `fn(*args)`, each call synchronised with `block_until_ready`."""
  return time_interleaved({"fn": fn}, *args, warmup=warmup, iters=iters)["fn"]


def time_interleaved(fns: dict[str, Callable[..., Any]], *args: Any, warmup: int = 2,
                     iters: int = 10) -> dict[str, dict[str, float]]:
  """Median / min ms of each fn(*args), timed in alternation: round i calls every function once, in an order
  rotated by i. A GPU at its power limit lowers its clock within a second of sustained load and raises it again
  when idle (an H200 under attention: 1980 MHz after a pause, about 1600-1850 MHz under load, docs/benchmarks.md), so
  timing one function after another hands the first one, or the one after a pause, the faster clock; in
  alternation every function meets the same clocks."""
  names = list(fns)

  def call(name):
    start = time.perf_counter()
    jax.block_until_ready(fns[name](*args))
    return (time.perf_counter() - start) * 1e3

  for _ in range(warmup):
    for name in names:
      call(name)
  times: dict[str, list[float]] = {name: [] for name in names}
  for i in range(iters):
    shift = i % len(names)
    for name in names[shift:] + names[:shift]:
      times[name].append(call(name))
  return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "iters": iters} for name, t in times.items()}


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
