"""Streaming-step benchmark: ms per chunk, cold compile time and peak memory of `stream_step`.

    python -m liveedit_jax.bench stream                          # liveedit-1.3b, bf16, 480×832, 3-frame chunks
    python -m liveedit_jax.bench stream --prune 0 0.5 0.7 0.9 --cache-on self_attn ffn --static-kv recompute reuse
    python -m liveedit_jax.bench stream --config tiny --height 64 --width 64   # CPU smoke run
    python -m liveedit_jax.bench stream --kernels pallas       # the kernels of liveedit_kernels/,
                                                                 # where measured faster

Random weights (speed does not depend on them). One JSON line per variant (`process_peak_gib` is the peak since
the process started, so run a variant alone for its own peak); FPS counts 4 video frames per latent
frame (the VAE's temporal stride), as the PyTorch reference's 318 ms/chunk = 37.7 FPS does.
"""

from __future__ import annotations

import itertools
import json
import time
import typing

import jax
import jax.numpy as jnp

from liveedit_jax import cli
from liveedit_jax.bench.timing import peak_memory_gib
from liveedit_jax.config import CLI_DTYPES, KernelFamily, DiTConfig
from liveedit_jax.dit import init_dit_params
from liveedit_jax.mask_cache import CacheOn, MaskCacheConfig, StaticKV
from liveedit_jax.stream_step import Refresh, StreamConfig, init_stream, stream_step


def _timed_chunks(config, params, state, source, n):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    out, state = stream_step(config, params, state, source)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) * 1e3)
  return times, state


def run_variant(config: DiTConfig, params, options: StreamConfig, latent_hw, chunks: int, warmup: int) -> dict:
  """Times one stream configuration.

  clip: a fresh 21-latent-frame clip (7 chunks; the cache grows from empty to 18 frames), compiled beforehand:
    the setting of the PyTorch reference's per-chunk figure. steady: later chunks with the rolling cache full.
  """
  h, w = latent_hw
  key = jax.random.key(0)
  context = jax.random.normal(key, (1, config.text_len, config.text_dim), jnp.float32)
  source = jax.random.normal(key, (1, options.chunk_frames, h, w, config.latent_channels), jnp.float32)
  new_stream = lambda: init_stream(config, params, context, latent_height=h, latent_width=w, options=options)  # noqa: E731
  (first_ms,), state = _timed_chunks(config, params, new_stream(), source, 1)  # the first chunk (compiles)
  (second_ms,), state = _timed_chunks(config, params, state, source, 1)  # a later one (compiles if it differs)
  clip_frames = 21
  clip, state = _timed_chunks(config, params, new_stream(), source, clip_frames // options.chunk_frames)
  _, state = _timed_chunks(config, params, state, source, warmup)
  steady, state = _timed_chunks(config, params, state, source, chunks)
  steady_ms = sorted(steady)[len(steady) // 2]
  clip_ms = sum(clip) / len(clip)
  fps = lambda ms: round(4 * options.chunk_frames / ms * 1e3, 1)  # noqa: E731
  mc = options.mask_cache
  return {
      "bench": "stream", "config": config.name, "dtype": config.compute_dtype, "kernels": config.kernels,
      "latent": [options.chunk_frames, h, w], "cache_frames": options.cache_frames, "refresh": options.refresh,
      "cache_on": mc.cache_on, "prune_ratio": mc.prune_ratio, "static_kv": mc.static_kv,
      "clip_ms_per_chunk": round(clip_ms, 2), "clip_fps": fps(clip_ms), "clip_chunk_ms": [round(t, 1) for t in clip],
      "steady_ms_per_chunk": round(steady_ms, 2), "steady_min_ms": round(min(steady), 2), "steady_fps": fps(steady_ms),
      "first_chunk_s": round(first_ms / 1e3, 2), "second_chunk_s": round(second_ms / 1e3, 2),
      "process_peak_gib": peak_memory_gib(), "device": jax.devices()[0].device_kind,
  }


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.bench stream", description=__doc__)
  parser.add_argument("--config", default="liveedit-1.3b")
  parser.add_argument("--dtype", default="bfloat16", choices=CLI_DTYPES)
  parser.add_argument("--kernels", default="auto", choices=typing.get_args(KernelFamily),
                      help="pallas: the kernels of liveedit_kernels/ this GPU measured fastest")
  parser.add_argument("--height", type=int, default=480, help="video height (latent = /8)")
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--cache-frames", type=int, default=18)
  parser.add_argument("--refresh", nargs="+", default=["clean"], choices=typing.get_args(Refresh))
  parser.add_argument("--cache-on", nargs="+", default=["none"], choices=typing.get_args(CacheOn))
  parser.add_argument("--prune", nargs="+", type=float, default=[0.7])
  parser.add_argument("--static-kv", nargs="+", default=["recompute"], choices=typing.get_args(StaticKV))
  parser.add_argument("--chunks", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args(argv)

  config = DiTConfig.preset(args.config, compute_dtype=args.dtype, param_dtype=args.dtype, kernels=args.kernels)
  params = init_dit_params(config, jax.random.key(0))
  latent_hw = (args.height // 8, args.width // 8)
  variants = []
  for refresh, cache_on in itertools.product(args.refresh, args.cache_on):
    if cache_on == "none":
      variants.append((refresh, MaskCacheConfig(cache_on="none")))
      continue
    for prune, static_kv in itertools.product(args.prune, args.static_kv):
      if cache_on == "ffn" and static_kv == "reuse":
        continue  # K/V reuse only concerns the self-attention placement
      variants.append((refresh, MaskCacheConfig(prune, cache_on, static_kv)))
  for refresh, mc in variants:
    options = StreamConfig(cache_frames=args.cache_frames, refresh=refresh, mask_cache=mc)
    try:
      print(json.dumps(run_variant(config, params, options, latent_hw, args.chunks, args.warmup)), flush=True)
    except Exception as err:  # noqa: BLE001 (one failing variant must not lose the others' figures)
      print(json.dumps({"bench": "stream", "refresh": refresh, "mask_cache": str(mc), "error": repr(err)[:500]}),
            flush=True)


if __name__ == "__main__":
  cli.run(main)
