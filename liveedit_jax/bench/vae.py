"""Streaming VAE benchmark: encode and decode ms per frame, first chunk and steady-state chunks.

    python -m liveedit_jax.bench vae                 # wan2.1-vae, random weights, 480×832, bf16 (one GPU)
    python -m liveedit_jax.bench vae --tiny          # tiny preset at 64×64, float32: a CPU smoke run

A stream is cut in chunks of `--latents` latent frames (3, LiveEdit's chunk): the first chunk is 9 frames ↔ 3
latents (frame 0 is encoded alone), every later chunk 12 frames ↔ 3 latents. Each step is jitted with the chunk
kind static, compiled once, then timed (median of `--iters` synchronised calls after `--warmup`); steady-state
calls start from the state the first chunk left. ms_per_frame divides by the chunk's video frames. One JSON line
per measurement, then a table.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp

from liveedit_jax import cli
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.bench.timing import compile_seconds, peak_memory_gib, time_call
from liveedit_jax.vae import VAEConfig, init_vae_params, init_vae_stream, vae_decode_step, vae_encode_step


def main(argv: list[str]) -> None:
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.bench vae", description=__doc__)
  parser.add_argument("--tiny", action="store_true", help="tiny preset, float32, 64×64 unless given")
  parser.add_argument("--height", type=int, help="pixels, a multiple of 8 (default 480; 64 with --tiny)")
  parser.add_argument("--width", type=int, help="pixels, a multiple of 8 (default 832; 64 with --tiny)")
  parser.add_argument("--dtype", choices=CLI_DTYPES, help="compute dtype (default bfloat16; "
                      "float32 with --tiny)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--latents", type=int, default=3, help="latent frames per chunk")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args(argv)

  preset = "tiny" if args.tiny else "wan2.1-vae"
  height = args.height or (64 if args.tiny else 480)
  width = args.width or (64 if args.tiny else 832)
  dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
  cfg = VAEConfig.preset(preset, compute_dtype=dtype)
  b, n, k, s = args.batch, args.latents, cfg.temporal_factor, cfg.spatial_factor

  # XLA compiles ~200 threefry draws for minutes on CPU, RngBitGenerator ones in seconds; timing needs no
  # statistical quality from the weights, so the cheapest of those ("unsafe_rbg") will do.
  params = jax.jit(functools.partial(init_vae_params, cfg))(jax.random.key(0, impl="unsafe_rbg"))
  key_video, key_latents = jax.random.split(jax.random.key(1))
  state = init_vae_stream(cfg, b, height, width)
  video = jax.random.uniform(key_video, (b, 1 + k * n, height, width, 3), jnp.float32, -1.0, 1.0)
  latents = jax.random.normal(key_latents, (b, n, height // s, width // s, cfg.z_dim), jnp.float32)
  # (op, step, first-chunk input, steady-state input, video frames of each)
  cases = [("encode", vae_encode_step, video[:, :1 + k * (n - 1)], video[:, 1:], 1 + k * (n - 1), k * n),
           ("decode", vae_decode_step, latents, latents, 1 + k * (n - 1), k * n)]

  rows = []
  for op, step, x_first, x_steady, frames_first, frames_steady in cases:
    first, first_s = compile_seconds(jax.jit(functools.partial(step, cfg, first=True)), params, state, x_first)
    steady, steady_s = compile_seconds(jax.jit(functools.partial(step, cfg, first=False)), params, state, x_steady)
    after_first, _ = first(params, state, x_first)
    for chunk, fn, st, x, frames, compile_s in (("first", first, state, x_first, frames_first, first_s),
                                                ("steady", steady, after_first, x_steady, frames_steady, steady_s)):
      timing = time_call(fn, params, st, x, warmup=args.warmup, iters=args.iters)
      row = {"bench": "vae", "op": op, "chunk": chunk, "preset": preset, "dtype": dtype, "batch": b,
             "height": height, "width": width, "frames": frames, "latent_frames": n,
             "ms_per_frame": timing["median_ms"] / (b * frames), **timing, "compile_s": compile_s,
             "peak_gib": peak_memory_gib(), "device": jax.devices()[0].device_kind}
      rows.append(row)
      print(json.dumps(row), flush=True)

  print(f"\n{'op':<8}{'chunk':<8}{'frames':>7}{'median ms':>11}{'ms/frame':>10}{'compile s':>11}")
  for r in rows:
    print(f"{r['op']:<8}{r['chunk']:<8}{r['frames']:>7}{r['median_ms']:>11.2f}{r['ms_per_frame']:>10.2f}"
          f"{r['compile_s']:>11.1f}")
