"""Training shards of the procedural editing benchmark (`liveedit_jax.synthetic`), through a VAE and a text encoder.

    python -m train.prepare_data --synthetic-edits 4096 --split train --frames 33 --height 128 --width 128 \\
        --vae runs/synth/vae --text-encoder runs/synth/text_encoder --out data/synth-train

Example i of the shards is clip `seed + i` of the split (`--seed`, default 0, offsets the clip indices, so a
second run with `--seed 4096` continues the first without overlap). Its source and target clips are encoded as
`--videos` input is: the VAE's posterior mean of the whole clip (`vae_encode`, frames in [−1, 1]), and its
instruction with `encode_prompts` (rows past the prompt zero). The clip size has no default: `--height` and
`--width` are required (the default model's is `--frames 33 --height 128 --width 128`; `--frames` keeps
prepare_data's default of 81 when not given).

Beside the shards, `edits.jsonl` has one line per example, in shard order: {"example", "split", "index", "seed",
"instruction", "edit": {kind, shape, colour, texture, new_colour, new_texture, style}, "frames", "height",
"width"}, so a training set can be audited (which edits, which held-out combinations are absent) and any example
re-rendered with `synthetic.make_example(split, index, ...)`. It is written after the shard directory is published
(to a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from tqdm import tqdm

from liveedit_jax import param_io, synthetic
from liveedit_jax.umt5 import TextEncoder, encode_prompts, load_text_encoder
from liveedit_jax.vae import VAEConfig, load_vae, vae_encode
from liveedit_jax.video_io import to_float

EDITS_FILE = "edits.jsonl"
Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # source, target latents [F, h, w, z]; context [L, D]

_encode = jax.jit(vae_encode, static_argnums=0)


def _make_example(split: str, index: int, sizes: dict[str, int]) -> synthetic.EditExample:
  return synthetic.make_example(split, index, **sizes)


def rendered_examples(split: str, start: int, count: int, *, frames: int, height: int, width: int,
                      workers: int = 0) -> Iterator[synthetic.EditExample]:
  """`synthetic.make_example(split, start + i, ...)` for i < count, in order, rendered by `workers` processes.

  workers: 0 takes one per CPU core; 1 renders here. The workers are spawned, not forked: forking a process that
  runs JAX's threads can deadlock. At most 4 examples per worker are in flight, so memory stays bounded however
  fast the consumer is.
  """
  sizes = {"frames": frames, "height": height, "width": width}
  workers = workers or multiprocessing.cpu_count()
  if workers == 1 or count < 2 * workers:
    yield from (_make_example(split, start + i, sizes) for i in range(count))
    return
  indices = iter(range(start, start + count))
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    inflight = collections.deque(pool.submit(_make_example, split, i, sizes) for _, i in zip(range(4 * workers),
                                                                                             indices))
    while inflight:
      example = inflight.popleft().result()
      if (i := next(indices, None)) is not None:
        inflight.append(pool.submit(_make_example, split, i, sizes))
      yield example


def check_clip_size(vae_config: VAEConfig, frames: int, height: int, width: int, vae_dir: str = "the VAE") -> None:
  """A clip size the benchmark renders and the VAE encodes, or a ValueError naming the flag and the need."""
  s, k = vae_config.spatial_factor, vae_config.temporal_factor
  unit = np.lcm(16, s)
  for name, value in (("--height", height), ("--width", width)):
    if value is None:
      raise ValueError(f"--synthetic-edits needs {name} (the default model's clips: --frames 33 --height 128 "
                       f"--width 128)")
    if value <= 0 or value % unit:
      raise ValueError(f"{name} {value} must be a positive multiple of {unit} (the benchmark renders multiples of "
                       f"16; {vae_dir} downsamples by {s})")
  if frames < 1 or (frames - 1) % k:
    raise ValueError(f"--frames {frames} must be 1 + {k}·n for {vae_dir} (the first frame is encoded alone)")


class SyntheticEdits:
  """Iterates the examples of `count` benchmark clips, `start`, `start + 1`, … of `split`; keeps their records.

  vae_config, vae_params: a `liveedit_jax.vae` model; text_encoder: a `liveedit_jax.umt5.TextEncoder`.
  Yields (source latents, target latents [F, h, w, z] float32, context [text_len, D] float32).
  """

  def __init__(self, split: str, count: int, vae_config: VAEConfig, vae_params: Any, text_encoder: TextEncoder, *,
               frames: int, height: int, width: int, start: int = 0, progress: bool = True, workers: int = 0):
    if count < 1:
      raise ValueError(f"--synthetic-edits must be positive, got {count}")
    synthetic.example_seed(split, start)  # the split exists and the range fits in it
    synthetic.example_seed(split, start + count - 1)
    check_clip_size(vae_config, frames, height, width)
    self.split, self.count, self.start = split, count, start
    self.sizes = {"frames": frames, "height": height, "width": width}
    self.vae_config, self.vae_params, self.text_encoder = vae_config, vae_params, text_encoder
    self.records: list[dict[str, Any]] = []
    self.progress, self.workers = progress, workers
    self._contexts: dict[str, np.ndarray] = {}  # instructions repeat: embed each once
    self._examples: Iterator[Example] | None = None

  @classmethod
  def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> "SyntheticEdits":
    """From prepare_data's flags: loads --vae and --text-encoder; usage mistakes go to `parser.error`."""
    if not (args.vae and args.text_encoder):
      parser.error("--synthetic-edits needs --vae and --text-encoder")
    try:
      check_clip_size(VAEConfig.from_dict(param_io.read_config(args.vae, "vae")), args.frames, args.height,
                      args.width, args.vae)
    except ValueError as e:
      parser.error(str(e))
    vae_config, vae_params = load_vae(args.vae)
    return cls(args.split, args.synthetic_edits, vae_config, vae_params, load_text_encoder(args.text_encoder),
               frames=args.frames, height=args.height, width=args.width, start=args.seed, workers=args.workers)

  def context(self, instruction: str) -> np.ndarray:
    if instruction not in self._contexts:
      self._contexts[instruction] = np.asarray(encode_prompts(self.text_encoder, [instruction]), np.float32)[0]
    return self._contexts[instruction]

  def encode(self, frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] → the VAE posterior mean [F, h, w, z] float32."""
    return np.asarray(_encode(self.vae_config, self.vae_params, jax.device_put(to_float(frames)[None])))[0]

  def __iter__(self) -> "SyntheticEdits":
    return self

  def __next__(self) -> Example:
    if self._examples is None:
      self._examples = self._generate()
    return next(self._examples)

  def _generate(self) -> Iterator[Example]:
    examples = rendered_examples(self.split, self.start, self.count, **self.sizes, workers=self.workers)
    for i, example in enumerate(tqdm(examples, total=self.count, desc=f"synthetic edits ({self.split})",
                                     unit="clip", disable=not self.progress)):
      self.records.append({"example": i, "split": example.split, "index": example.index, "seed": example.seed,
                           "instruction": example.instruction, "edit": dataclasses.asdict(example.edit),
                           **self.sizes})
      yield self.encode(example.source), self.encode(example.target), self.context(example.instruction)

  def write_sidecar(self, directory: str | os.PathLike) -> Path:
    """Writes `edits.jsonl` (the records of the examples iterated so far) into the shard directory."""
    path = Path(directory) / EDITS_FILE
    tmp = path.with_name(f".{EDITS_FILE}.partial-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
    os.replace(tmp, path)
    return path


def read_edits(directory: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a shard directory's `edits.jsonl`, in shard order."""
  path = Path(directory) / EDITS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{directory} has no {EDITS_FILE} (made by prepare_data --synthetic-edits)")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
