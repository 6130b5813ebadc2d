"""Builds training shards (`train/shards.py`) from one of four inputs.

    # random latents and prompt embeddings at a config's sizes (smoke tests)
    python -m train.prepare_data --config tiny --synthetic 64 --out data/tiny
    # precomputed latents: <id>.source.npy, <id>.target.npy [F, H, W, 16] and <id>.context.npy [L, D] per pair
    python -m train.prepare_data --latents latents/ --out data/liveedit-latents
    # paired videos and prompts, encoded with the Wan VAE and umT5 (converted with convert.wan_vae / convert.umt5)
    python -m train.prepare_data --videos pairs.jsonl --vae checkpoints/wan2.1-vae \
        --text-encoder checkpoints/umt5-xxl --frames 81 --out data/liveedit-latents
    # clips of the procedural editing benchmark (liveedit_jax/synthetic.py) through the same encoders, with an
    # edits.jsonl of their instructions and edits (train/synthetic_data.py)
    python -m train.prepare_data --synthetic-edits 4096 --split train --frames 33 --height 128 --width 128 \
        --vae runs/synth/vae --text-encoder runs/synth/text_encoder --out data/synth-train

A line of pairs.jsonl is {"source": "a.mp4", "target": "a_edit.mp4", "prompt": "..."} (paths relative to the
file). Videos are read at their own size, which must be a multiple of 8, and cut to their first `--frames` frames
(1 + 4k: 81 frames give 21 latents).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from liveedit_jax import cli
from liveedit_jax.config import CLI_DTYPES
from liveedit_jax.synthetic import SPLITS
from train.configs import TRAIN_PRESETS, TrainConfig
from train.shards import ShardWriter

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # source, target [F, H, W, 16]; context [L, D]


def synthetic_examples(config: TrainConfig, count: int, seed: int = 0) -> Iterator[Example]:
  """Standard-normal latents of the config's size; contexts with a random number of non-zero prompt rows."""
  dit = config.dit()
  rng = np.random.default_rng(seed)
  shape = (config.frames, config.height, config.width, dit.latent_channels)
  for _ in range(count):
    context = np.zeros((dit.text_len, dit.text_dim), np.float32)
    rows = rng.integers(1, dit.text_len + 1)
    context[:rows] = rng.standard_normal((rows, dit.text_dim), np.float32)
    yield rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32), context


def latent_examples(directory: Path) -> Iterator[Example]:
  """Triples <id>.source.npy, <id>.target.npy, <id>.context.npy, in sorted id order."""
  ids = sorted(p.name[:-len(".source.npy")] for p in directory.glob("*.source.npy"))
  if not ids:
    raise FileNotFoundError(f"{directory} has no <id>.source.npy files")
  for i in ids:
    missing = [f"{i}.{k}.npy" for k in ("target", "context") if not (directory / f"{i}.{k}.npy").is_file()]
    if missing:
      raise FileNotFoundError(f"{directory}: {', '.join(missing)} missing for pair {i!r}")
    yield tuple(np.load(directory / f"{i}.{k}.npy") for k in ("source", "target", "context"))


def read_video(path: Path, frames: int) -> np.ndarray:
  """The first `frames` frames of a video file, at its own size, as [T, H, W, 3] float32 in [−1, 1]."""
  from liveedit_jax.video_io import open_native_reader  # only this path reads videos

  with open_native_reader(str(path)) as reader:
    out = reader.read(frames)
  if len(out) < frames:
    raise ValueError(f"{path} has {len(out)} frames, fewer than --frames {frames}")
  return out.astype(np.float32) / 127.5 - 1.0


def video_examples(manifest: Path, vae_config, vae_params, text_encoder, frames: int) -> Iterator[Example]:
  """Encodes the manifest's video pairs with the VAE (posterior mean) and their prompts with umT5.

  vae_config, vae_params: a `liveedit_jax.vae` model; text_encoder: a `liveedit_jax.umt5.TextEncoder`.
  """
  import jax  # the encoders run here only, on the default device

  from liveedit_jax.umt5 import encode_prompts
  from liveedit_jax.vae import vae_encode

  if (frames - 1) % 4:
    raise ValueError(f"--frames must be 1 + 4k (Wan's VAE), got {frames}")
  encode = jax.jit(vae_encode, static_argnums=0)
  for line in manifest.read_text().splitlines():
    if not line.strip():
      continue
    pair = json.loads(line)
    latents = [np.asarray(encode(vae_config, vae_params, read_video(manifest.parent / pair[k], frames)[None]))[0]
               for k in ("source", "target")]
    context = np.asarray(encode_prompts(text_encoder, [pair["prompt"]]), np.float32)[0]
    yield latents[0], latents[1], context


def write(out: str, examples: Iterator[Example], shard_size: int, dtype: str) -> Path:
  """Writes the examples as shards (shapes from the first example)."""
  first = next(examples, None)
  if first is None:
    raise ValueError("no examples to write")
  writer = ShardWriter(out, first[0].shape, first[2].shape, shard_size=shard_size, dtype=dtype)
  try:
    writer.add(*first)
    for example in examples:
      writer.add(*example)
  except BaseException:
    writer.abort()
    raise
  return writer.close()


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m train.prepare_data", description=__doc__)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--synthetic", type=int, metavar="N", help="N random examples at --config's sizes")
  source.add_argument("--latents", type=Path, metavar="DIR", help="a directory of .npy triples")
  source.add_argument("--videos", type=Path, metavar="JSONL", help="a manifest of video pairs and prompts")
  source.add_argument("--synthetic-edits", type=int, metavar="N",
                      help="N clips of the procedural benchmark's --split through --vae and --text-encoder "
                           "(train/synthetic_data.py; needs --height and --width)")
  parser.add_argument("--out", required=True, help="the shard directory to create")
  parser.add_argument("--config", default="tiny", choices=sorted(TRAIN_PRESETS), help="sizes for --synthetic")
  parser.add_argument("--seed", type=int, default=0,
                      help="for --synthetic; for --synthetic-edits the first clip index (default: %(default)s)")
  parser.add_argument("--vae", help="converted VAE directory (--videos, --synthetic-edits)")
  parser.add_argument("--text-encoder", help="converted umT5 directory (--videos, --synthetic-edits)")
  parser.add_argument("--frames", type=int, default=81, help="video frames per clip (--videos, --synthetic-edits)")
  parser.add_argument("--split", default="train", choices=SPLITS, help="benchmark split (--synthetic-edits)")
  parser.add_argument("--height", type=int, help="frame height (--synthetic-edits; required)")
  parser.add_argument("--width", type=int, help="frame width (--synthetic-edits; required)")
  parser.add_argument("--workers", type=int, default=0,
                      help="--synthetic-edits render processes, 0: one per CPU core, 1: none (default: %(default)s)")
  parser.add_argument("--shard-size", type=int, default=256)
  parser.add_argument("--dtype", choices=CLI_DTYPES, default="bfloat16", help="storage dtype")
  args = parser.parse_args(argv)
  # Checked before the encoders load and the examples are made: ShardWriter would refuse --out only then.
  if Path(args.out).exists():
    raise FileExistsError(f"--out {args.out} exists; remove it or choose another --out")
  for option, path in (("--latents", args.latents), ("--videos", args.videos), ("--vae", args.vae),
                       ("--text-encoder", args.text_encoder)):
    if path is not None and not Path(path).exists():
      raise FileNotFoundError(f"{option} {path}: no such file or directory")

  if args.synthetic is not None:
    examples = synthetic_examples(TrainConfig.preset(args.config, stage=1), args.synthetic, args.seed)
  elif args.latents is not None:
    examples = latent_examples(args.latents)
  elif args.synthetic_edits is not None:
    from train.synthetic_data import SyntheticEdits

    examples = SyntheticEdits.from_args(args, parser)
  else:
    if not (args.vae and args.text_encoder):
      parser.error("--videos needs --vae and --text-encoder")
    from liveedit_jax.umt5 import load_text_encoder
    from liveedit_jax.vae import load_vae

    examples = video_examples(args.videos, *load_vae(args.vae), load_text_encoder(args.text_encoder), args.frames)
  path = write(args.out, examples, args.shard_size, args.dtype)
  if args.synthetic_edits is not None:
    examples.write_sidecar(path)
  print(json.dumps({"out": str(path), **{k: v for k, v in json.loads((path / "index.json").read_text()).items()
                                         if k != "shards"}}))


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
