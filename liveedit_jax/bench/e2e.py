"""End-to-end benchmark of `python -m liveedit_jax.stream`: encode → DiT stream step → decode, per chunk.

    python -m liveedit_jax.bench e2e                         # liveedit-1.3b + wan2.1-vae, bf16, 480×832, 81 frames
    python -m liveedit_jax.bench e2e --decoder-preset taew2_1                    # TAEHV decodes, Wan's VAE encodes
    python -m liveedit_jax.bench e2e --encoder-preset taew2_1 --decoder-preset taew2_1      # TAEHV both ways
    python -m liveedit_jax.bench e2e --dit-preset tiny --vae-preset tiny --height 32 --width 48 --frames 21 \\
        --dtype float32                                      # CPU smoke run

    python -m liveedit_jax.bench e2e --sync-stages --prune 0.5   # the CLI's streaming and running options
    python -m liveedit_jax.bench e2e --devices 2                 # the autoencoders on one GPU, the DiT on another

Writes random-weight checkpoints of the presets (speed does not depend on the weights), a random prompt embedding
and a random raw rgb24 clip into a temporary directory, then runs the CLI on them (raw in, raw out, so no video
codec is timed) with the streaming and running options given here (those of `python -m liveedit_jax.stream`).
The Wan VAE of --vae-preset encodes and decodes; --encoder-preset / --decoder-preset put a TAEHV of that preset
(`taehv.TAEHV_PRESETS`, random weights, in --dtype) on that side instead, passed to the CLI as its --vae /
--decoder.
The CLI's own lines on stderr are the result: the compile time of its steps (and how many the compilation cache
answered), per chunk the frame rate, wall time and latency (with --sync-stages also the ms of encode / DiT /
decode), and the summary's rate after chunk 0 and time to the first edited frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import jax
import numpy as np

from liveedit_jax import cli, stream
from liveedit_jax.config import CLI_DTYPES, DiTConfig
from liveedit_jax.dit import init_dit_params
from liveedit_jax.param_io import save_params
from liveedit_jax.taehv import KIND as TAEHV_KIND
from liveedit_jax.taehv import TAEHV_PRESETS, TAEHVConfig, init_taehv_params
from liveedit_jax.vae import VAEConfig, init_vae_params


def _as_argv(action: argparse.Action, args: argparse.Namespace) -> list[str]:
  """The option `action` parsed into `args`, written back as command-line arguments."""
  value = getattr(args, action.dest)
  if action.nargs == 0:  # a flag
    return [action.option_strings[0]] if value else []
  return [action.option_strings[0], str(value)]


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.bench e2e", description=__doc__)
  parser.add_argument("--dit-preset", default="liveedit-1.3b")
  parser.add_argument("--vae-preset", default="wan2.1-vae", help="the Wan VAE: encodes and decodes unless replaced")
  for side in ("encoder", "decoder"):
    parser.add_argument(f"--{side}-preset", choices=sorted(TAEHV_PRESETS),
                        help=f"a TAEHV preset as the {side} instead of the Wan VAE's (taew2_1: Wan 2.1's latents)")
  parser.add_argument("--dtype", default="bfloat16", choices=CLI_DTYPES)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--frames", type=int, default=81)
  groups = [stream.add_stream_options(parser.add_argument_group("streaming (as python -m liveedit_jax.stream)")),
            stream.add_run_options(parser.add_argument_group("running (as python -m liveedit_jax.stream)"))]
  args = parser.parse_args(argv)
  forwarded = [arg for group in groups for action in group._group_actions for arg in _as_argv(action, args)]

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
    del params
    sides = {}  # side → the directory the CLI gets for it, each written once
    for side, preset in (("encoder", args.encoder_preset), ("decoder", args.decoder_preset)):
      if preset is None:
        path = tmp / "vae"
        if not path.exists():
          save_params(path, "vae", vae.to_dict(), jax.jit(init_vae_params, static_argnums=0)(vae, key))
      else:
        path = tmp / f"taehv-{preset}"
        if not path.exists():
          taehv = TAEHVConfig.preset(preset, param_dtype=args.dtype, compute_dtype=args.dtype)
          save_params(path, TAEHV_KIND, taehv.to_dict(), jax.jit(init_taehv_params, static_argnums=0)(taehv, key))
      sides[side] = str(path)
    decoder = [] if sides["decoder"] == sides["encoder"] else ["--decoder", sides["decoder"]]
    rng = np.random.default_rng(0)
    np.save(tmp / "context.npy", rng.standard_normal((1, dit.text_len, dit.text_dim)).astype(np.float32))
    clip = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    clip.tofile(tmp / "in.rgb")
    stream.main(["--input", str(tmp / "in.rgb"), "--input-size", f"{args.width}x{args.height}",
                 "--output", str(tmp / "out.rgb"), "--dit", str(tmp / "dit"), "--vae", sides["encoder"], *decoder,
                 "--context", str(tmp / "context.npy"), "--height", str(args.height), "--width", str(args.width),
                 "--dtype", args.dtype, *forwarded])
    frames = (tmp / "out.rgb").stat().st_size // (3 * args.height * args.width)
    print(f"device: {jax.devices()[0].device_kind}, {args.devices} of {jax.device_count()} used; output frames: "
          f"{frames}", flush=True)
