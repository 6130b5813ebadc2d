"""End-to-end benchmark of `python -m liveedit_jax.stream`: VAE encode → DiT stream step → VAE decode, per chunk.

    python -m liveedit_jax.bench e2e                         # liveedit-1.3b + wan2.1-vae, bf16, 480×832, 81 frames
    python -m liveedit_jax.bench e2e --dit-preset tiny --vae-preset tiny --height 32 --width 48 --frames 21 \\
        --dtype float32                                      # CPU smoke run

Writes random-weight checkpoints of the presets (speed does not depend on the weights), a random prompt embedding
and a random raw rgb24 clip into a temporary directory, then runs the CLI on them (raw in, raw out, so no video
codec is timed). The CLI's own per-chunk lines on stderr are the result: ms of encode / DiT / decode and the frame
rate, chunk 0 including compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import jax
import numpy as np

from liveedit_jax import stream
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import init_dit_params
from liveedit_jax.param_io import save_params
from liveedit_jax.vae import VAEConfig, init_vae_params


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m liveedit_jax.bench e2e")
  parser.add_argument("--dit-preset", default="liveedit-1.3b")
  parser.add_argument("--vae-preset", default="wan2.1-vae")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--prune", default="0.7")
  parser.add_argument("--cache-on", default="self_attn")
  args = parser.parse_args(argv)

  dit = DiTConfig.preset(args.dit_preset, param_dtype=args.dtype, compute_dtype=args.dtype)
  vae = VAEConfig.preset(args.vae_preset, param_dtype=args.dtype, compute_dtype=args.dtype)
  key = jax.random.key(0)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    params = init_dit_params(dit, key)
    # Wan zero-initialises the head; random weights make the edited latents (and so the mask) non-trivial.
    params["head"]["proj"]["kernel"] = 0.02 * jax.random.normal(key, params["head"]["proj"]["kernel"].shape,
                                                                params["head"]["proj"]["kernel"].dtype)
    save_params(tmp / "dit", "dit", dataclasses.asdict(dit), params)
    save_params(tmp / "vae", "vae", vae.to_dict(), jax.jit(init_vae_params, static_argnums=0)(vae, key))
    del params
    rng = np.random.default_rng(0)
    np.save(tmp / "context.npy", rng.standard_normal((1, dit.text_len, dit.text_dim)).astype(np.float32))
    clip = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    clip.tofile(tmp / "in.rgb")
    stream.main(["--input", str(tmp / "in.rgb"), "--input-size", f"{args.width}x{args.height}",
                 "--output", str(tmp / "out.rgb"), "--dit", str(tmp / "dit"), "--vae", str(tmp / "vae"),
                 "--context", str(tmp / "context.npy"), "--height", str(args.height), "--width", str(args.width),
                 "--dtype", args.dtype, "--prune", args.prune, "--cache-on", args.cache_on])
    frames = (tmp / "out.rgb").stat().st_size // (3 * args.height * args.width)
    print(f"device: {jax.devices()[0].device_kind}; output frames: {frames}", flush=True)
