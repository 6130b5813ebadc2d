"""Scores a video editor on the procedural benchmark (`synthetic.py`) with the metrics of `metrics.py`.

    # the do-nothing baseline and the ceiling
    python -m liveedit_jax.evaluate --editor source --split test --clips 32 --json runs/eval/source.json
    python -m liveedit_jax.evaluate --editor target --split test --clips 32 --json runs/eval/target.json
    # a streaming editor (the stream CLI's pipeline and options), with side-by-side videos of the first clips
    python -m liveedit_jax.evaluate --editor stream --dit runs/synth/dit --vae runs/synth/vae \\
        --text-encoder runs/synth/text_encoder --split test --clips 32 --json runs/eval/stream.json \\
        --videos runs/eval/videos
    # a Stage 1 (bidirectional) or Stage 2 (--chunk-causal) model through the 100-NFE CFG sampler
    python -m liveedit_jax.evaluate --editor sampler --chunk-causal --dit runs/synth/stage2 ... --steps 50
    # the default model (shipped in the package) as a streaming editor
    python -m liveedit_jax.evaluate --editor stream --split test --clips 32
    # a TAEHV (python -m convert.taehv) decoding what the Wan VAE encodes, or doing both (--vae DIR alone)
    python -m liveedit_jax.evaluate --editor stream --dit ... --vae checkpoints/wan2.1-vae \\
        --decoder checkpoints/taew2_1

Models: each of --dit, --vae and --text-encoder left out is the default model's part (`default_model.py`; the
directory LIVEEDIT_DEFAULT_MODEL names instead, when set), its files checked against their sha256 first; parts that do
not fit each other are refused in one line naming both directories. --vae (encodes and decodes) and --decoder (decodes
instead) each take a converted Wan VAE or TAEHV directory, as the stream CLI's do. Clip sizes (--frames, --height,
--width) default to the default DiT's native size when it runs, else to the benchmark's 33 × 128 × 128.

Clip i of a run is `synthetic.make_example(split, seed + i, frames, height, width)`, and the editor's noise for
it comes from `jax.random.key(seed + i)`: a clip's edit and scores depend only on its index in the split, not on
how many clips the run has or where it starts, and a run repeats bit for bit.

Editors:
  source   returns its input: the do-nothing baseline (perfect background, edit accuracy 0).
  target   returns the ground truth: the ceiling (PSNRs at metrics' cap, accuracy 1, flicker 0).
  stream   `stream_step` chunk by chunk as `python -m liveedit_jax.stream` runs it: the encode step of 9 video
           frames then 12 (Wan's VAE encodes the first frame alone; a TAEHV encoder takes 12 every time),
           `init_stream` + `stream_step` per chunk, the decode step (9 frames, then 12, either decoder); a partial
           last chunk is padded by repeating its last frame. Needs T = 1 + 4k. Output frame j is scored against
           ground-truth frame j: a TAEHV encoder's latents look 3 frames ahead, so its stream writes each frame 3
           frames after reading it and flushes the last ones with a chunk of padding (as the stream CLI does);
           the T edited frames are those of source frames 0 … T − 1, not shifted.
  sampler  `sampler.sample_edit` on whole-clip `vae_encode` (or `taehv_encode`) latents (`--steps` Euler steps,
           2 forwards each with `--guidance` ≠ 1), bidirectional, or chunk-causal with `--chunk-causal` (latent
           frames a multiple of 3), then `vae_decode` (or `taehv_decode`). The negative prompt is the all-zero
           context: the null prompt that text dropout trains (`train/losses.py:drop_text`), not the encoded empty
           string.

Per clip the JSON record holds split, index, seed, instruction, the edit (`synthetic.Edit` as a dict) and:
  psnr, background_psnr, edit_psnr, chroma_psnr (the colour alone, `metrics.chroma_psnr`), ssim, background_ssim,
  edit_ssim (dB capped at metrics' cap; edit_* null for an empty mask, i.e. a `none` edit), edit_accuracy
  (recolor edits only, else null), flicker, chunk_background_psnr (per chunk of the stream's chunking, 9 then 12
  frames: drift along the clip),
  mask_iou (stream with the mask cache only: IoU over chunks 1… of the token set the cache recomputed with the
  tokens the edit truly touches, `metrics.token_mask` at tokens of VAE factor × DiT patch pixels; chunk 0 runs
  every token by design and is left out) with chunk_mask_iou per chunk, time_s (the editing's wall time: frames
  in → edited frames on the host; the prompt embedding and stream set-up, done before the first frame arrives,
  are not counted), first_frame_s (time to the first edited frame) and fps.
edit_accuracy is taken over the decidable masked pixels: those where the ground truth is nearer the instructed
colour than the source colour and the source is nearer the source colour (anti-aliased edges and a texture's
half-bright shade can blend either way); on them `target` scores 1 and `source` 0 by construction.

The `summary` holds the means over clips (NaN/null values skipped) of every scalar, `mask_iou` (null where no
mask cache runs), `chunk_background_psnr` per chunk, `by_kind` (the means per edit kind), and the speed: `fps`
over the clips after the first (the first compiles; with one clip, that clip's), `first_frame_s` of clip 0
(compiles included), `latency_s` (mean time to the first edited frame over the later clips); speeds are null for
the `source` and `target` editors, which do no work. A progress bar over clips goes to stderr and a table to
stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from liveedit_jax import autoencoders, cli, default_model, metrics, synthetic
from liveedit_jax.autoencoders import Autoencoder
from liveedit_jax.config import CLI_DTYPES, DiTConfig
from liveedit_jax.dit import load_dit
from liveedit_jax.sampler import sample_edit
from liveedit_jax.schedule import GENERATOR_SHIFT
from liveedit_jax.stream import (add_autoencoder_options, add_stream_options, check_decoder, decode_chunk, decoder_dir,
                                 encode_chunk, stream_options)
from liveedit_jax.stream_step import StreamConfig, init_stream, stream_step
from liveedit_jax.umt5 import TextEncoder, UMT5Config, encode_prompts, load_text_encoder
from liveedit_jax.vae import init_vae_stream, load_vae  # noqa: F401 (notebooks/cache_placement.ipynb reads them here)
from liveedit_jax.video_io import open_writer, to_float, to_uint8

EDITORS = ("source", "target", "stream", "sampler")
# The contract other tools read (issue 16): these keys are always in the summary.
SUMMARY_KEYS = ("background_psnr", "edit_psnr", "edit_accuracy", "flicker", "mask_iou", "fps")
# Clip sizes without the default DiT: the benchmark's clips (the default model's native size too).
BENCHMARK_SIZE = {"frames": 33, "height": 128, "width": 128}
# The end-of-run table's columns: (summary key, title, digits).
TABLE_COLUMNS = (("background_psnr", "bg PSNR", 2), ("edit_psnr", "edit PSNR", 2), ("chroma_psnr", "colour PSNR", 2),
                 ("background_ssim", "bg SSIM", 4), ("edit_ssim", "edit SSIM", 4), ("edit_accuracy", "edit acc", 3),
                 ("flicker", "flicker", 4), ("mask_iou", "mask IoU", 3))
SCALAR_KEYS = ("psnr", "background_psnr", "edit_psnr", "chroma_psnr", "ssim", "background_ssim", "edit_ssim",
               "edit_accuracy", "flicker", "mask_iou")

# Jitted once per process (configs are static and hashable), so the clips of a run, and runs in one process,
# share compilations; the stream steps are the stream CLI's own jits (`encode_chunk`, `decode_chunk`).
encode_clip = jax.jit(autoencoders.encode, static_argnums=0)
decode_clip = jax.jit(autoencoders.decode, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class Edited:
  """An editor's output for one clip."""

  frames: np.ndarray  # uint8 [T, H, W, 3]
  time_s: float | None  # wall time of the editing (None for the oracle editors)
  first_frame_s: float | None  # time until the first edited frame was on the host
  recomputed: np.ndarray | None = None  # bool [chunks − 1, P]: spatial tokens the mask cache ran in chunks 1…


Editor = Callable[[synthetic.EditExample], Edited]


def source_editor(example: synthetic.EditExample) -> Edited:
  return Edited(example.source, None, None)


def target_editor(example: synthetic.EditExample) -> Edited:
  return Edited(example.target, None, None)


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
  """The loaded DiT, autoencoder (--vae, a Wan VAE or a TAEHV: it encodes, and decodes unless `decoder` is set) and
  text encoder, params on the default device, and the --decoder autoencoder."""

  dit_config: DiTConfig
  dit_params: Any
  vae_config: autoencoders.Config
  vae_params: Any
  text_encoder: TextEncoder
  decoder: Autoencoder | None = None  # None: the VAE decodes

  @property
  def encoding(self) -> Autoencoder:
    return Autoencoder(self.vae_config, self.vae_params)

  @property
  def decoding(self) -> Autoencoder:
    return self.decoder or self.encoding

  def context(self, instruction: str) -> np.ndarray:
    """[1, text_len, text_dim] embedding of the instruction (rows past it zero), on the host as the stream CLI
    holds it: a device array here would be committed to its device, and `stream_step` would compile again for
    state built from it instead of sharing the stream CLI's compilation in one process."""
    return np.asarray(jax.device_get(encode_prompts(self.text_encoder, [instruction])))


def stream_chunk_sizes(options: StreamConfig, decoder: autoencoders.Config) -> tuple[int, int]:
  """Video frames the stream writes for the first chunk and for each later one (9 and 12 for 3-latent chunks,
  with a Wan or a TAEHV decoder; a TAEHV encoder reads 12 for the first, `autoencoders.chunking`)."""
  return autoencoders.chunking(decoder, decoder, options.chunk_frames).written


def frame_chunks(frames: int, sizes: tuple[int, int]) -> list[int]:
  """The chunking of a clip of `frames` frames: sizes[0], then sizes[1] each, the last one possibly partial."""
  chunks = [min(frames, sizes[0])]
  while sum(chunks) < frames:
    chunks.append(min(sizes[1], frames - sum(chunks)))
  return chunks


def edit_stream(models: Models, options: StreamConfig, frames: np.ndarray, context: np.ndarray,
                key: jax.Array) -> Edited:
  """Edits uint8 frames [T, H, W, 3] chunk by chunk: encode → `stream_step` → decode, as the stream CLI does
  (`autoencoders.stream_chunks`: output frame j is the edit of frame j, so the T frames align with the ground
  truth with a TAEHV encoder too, which writes them 3 frames late and flushes its last ones with a padding chunk).

  context: [1, L, text_dim]; key: the stream's noise key. With the mask cache on, `Edited.recomputed` holds, for
  chunks 1…, the active spatial tokens the step chose after the previous chunk.
  """
  m = models
  _, height, width, _ = frames.shape
  encoder, decoder = m.encoding, m.decoding
  s = encoder.config.spatial_factor
  state = init_stream(m.dit_config, m.dit_params, context, latent_height=height // s, latent_width=width // s,
                      options=options, rng=key)
  ae_state = autoencoders.init_state(encoder.config, decoder.config, 1, height, width)
  frame_tokens = state.kv.frame_tokens
  chunking = autoencoders.chunking(encoder.config, decoder.config, options.chunk_frames)
  out, recomputed, first_frame_s, read = [], [], None, 0

  def take(n: int) -> np.ndarray:
    nonlocal read
    read += n
    return frames[read - n:read]

  begin = time.perf_counter()
  for i, (chunk, source) in enumerate(autoencoders.stream_chunks(take, chunking)):
    if state.tokens is not None and i > 0:
      # Read before the step donates the state: the tokens this chunk recomputes, chosen after the last one.
      active = np.zeros(frame_tokens, bool)
      active[np.asarray(state.tokens.active[0])] = True
      recomputed.append(active)
    ae_state, latents = encode_chunk(encoder.config, encoder.params, ae_state, jax.device_put(to_float(chunk)[None]),
                                     first=i == 0)
    edited, state = stream_step(m.dit_config, m.dit_params, state, latents)
    ae_state, decoded = decode_chunk(decoder.config, decoder.params, ae_state, edited, first=i == 0)
    out.append(to_uint8(jax.device_get(decoded)[0, :len(source)]))
    if first_frame_s is None:
      first_frame_s = time.perf_counter() - begin
  time_s = time.perf_counter() - begin
  return Edited(np.concatenate(out), time_s, first_frame_s,
                np.stack(recomputed) if state.tokens is not None and recomputed else None)


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  steps: int = 50
  guidance: float = 5.0
  shift: float = GENERATOR_SHIFT
  chunk_frames: int | None = None  # None: the bidirectional model; 3: the chunk-causal one


def edit_sampler(models: Models, options: SamplerOptions, frames: np.ndarray, context: np.ndarray,
                 key: jax.Array) -> Edited:
  """Edits uint8 frames [T = 1 + 4k, H, W, 3] as one clip: whole-clip encode (`vae_encode` or `taehv_encode`) →
  `sample_edit` → whole-clip decode.

  The negative prompt is the zero context, the null prompt of training's text dropout.
  """
  m = models
  begin = time.perf_counter()
  source = encode_clip(m.vae_config, m.vae_params, jax.device_put(to_float(frames)[None]))
  latents = sample_edit(m.dit_config, m.dit_params, source, context, jnp.zeros_like(context), key,
                        chunk_frames=options.chunk_frames, num_steps=options.steps, guidance=options.guidance,
                        shift=options.shift)
  decoder = m.decoding
  out = to_uint8(jax.device_get(decode_clip(decoder.config, decoder.params, latents))[0])
  time_s = time.perf_counter() - begin
  return Edited(out, time_s, time_s)  # every frame arrives at once


def model_editor(edit: Callable[..., Edited], models: Models, options) -> Editor:
  """An editor running `edit(models, options, frames, context, key)` with the clip's prompt and noise key."""

  def run(example: synthetic.EditExample) -> Edited:
    return edit(models, options, example.source, models.context(example.instruction),
                jax.random.key(example.index))

  return run


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def _finite(x: Any) -> float | None:
  """A float for JSON, or None for undefined (NaN; PSNRs are capped by `metrics`, so never ±inf) and missing values."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def decidable_colour_mask(source: np.ndarray, target: np.ndarray, mask: np.ndarray, source_rgb, instructed_rgb):
  """bool [T, H, W]: masked pixels where the target is nearer the instructed colour than the source colour and
  the source is nearer the source colour (the pixels whose colour answers the instruction unambiguously)."""

  def nearer_instructed(frames):
    x = frames.astype(np.float64)
    d_src = np.square(x - np.asarray(source_rgb, np.float64)).sum(-1)
    d_new = np.square(x - np.asarray(instructed_rgb, np.float64)).sum(-1)
    return d_new < d_src

  return mask & nearer_instructed(target) & ~nearer_instructed(source)


def score_clip(example: synthetic.EditExample, edited: Edited, chunk_sizes: Sequence[int],
               pixels_per_token: tuple[int, int] | None = None, temporal_factor: int = 4,
               chunk_frames: int = 3) -> dict[str, Any]:
  """The record of one clip (see the module docstring). pixels_per_token, temporal_factor, chunk_frames: the
  token geometry for mask_iou (only used when `edited.recomputed` is set)."""
  pred, target, mask = edited.frames[None], example.target[None], example.mask[None]
  if pred.shape != target.shape:
    raise ValueError(f"editor returned frames of shape {list(pred.shape[1:])}, expected {list(target.shape[1:])}")
  edit = example.edit
  record: dict[str, Any] = {"split": example.split, "index": example.index, "seed": example.seed,
                            "instruction": example.instruction, "edit": dataclasses.asdict(edit)}
  record["psnr"] = _finite(metrics.psnr(pred, target)[0])
  record["background_psnr"] = _finite(metrics.background_psnr(pred, target, mask)[0])
  record["edit_psnr"] = _finite(metrics.edit_psnr(pred, target, mask)[0])
  record["chroma_psnr"] = _finite(metrics.chroma_psnr(pred, target)[0])
  record["ssim"] = _finite(metrics.ssim(pred, target)[0])
  record["background_ssim"] = _finite(metrics.background_ssim(pred, target, mask)[0])
  record["edit_ssim"] = _finite(metrics.edit_ssim(pred, target, mask)[0])
  accuracy = None
  if edit.kind == "recolor":
    src, new = synthetic.PALETTE[edit.colour], synthetic.PALETTE[edit.new_colour]
    decidable = decidable_colour_mask(example.source, example.target, example.mask, src, new)
    accuracy = _finite(metrics.edit_accuracy(pred, decidable[None], np.array([src]), np.array([new]))[0])
  record["edit_accuracy"] = accuracy
  record["flicker"] = _finite(metrics.flicker(pred, target)[0])
  record["chunk_background_psnr"] = [_finite(v) for v in
                                     metrics.chunk_errors(pred, target, chunk_sizes, mask, where="background")[0]]
  record["mask_iou"], record["chunk_mask_iou"] = None, None
  if edited.recomputed is not None:
    touched = metrics.token_mask(mask, temporal_factor=temporal_factor, pixels_per_token=pixels_per_token)[0]
    f = touched.shape[0]
    touched = touched.reshape(f, -1)
    # Chunk j ≥ 1 covers latent frames [c·j, c·(j+1)) (its real ones); a token is touched if any of them is.
    per_chunk = np.stack([touched[chunk_frames * j:chunk_frames * (j + 1)].any(0)
                          for j in range(1, 1 + len(edited.recomputed))])
    record["mask_iou"] = _finite(metrics.mask_iou(edited.recomputed[None], per_chunk[None])[0])
    record["chunk_mask_iou"] = [_finite(v) for v in metrics.mask_iou(edited.recomputed[:, None],
                                                                     per_chunk[:, None])]
  record["frames"] = len(edited.frames)
  record["time_s"], record["first_frame_s"] = edited.time_s, edited.first_frame_s
  record["fps"] = len(edited.frames) / edited.time_s if edited.time_s else None
  return record


def _nanmean_lists(lists: Sequence[Sequence[float | None]]) -> list[float | None]:
  array = np.array([[np.nan if v is None else v for v in row] for row in lists], np.float64)
  with np.errstate(invalid="ignore"):
    return [None if np.isnan(array[:, j]).all() else float(np.nanmean(array[:, j])) for j in range(array.shape[1])]


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The run's summary (see the module docstring) from its per-clip records."""
  summary = dict(metrics.summarize(records, SCALAR_KEYS))
  summary["chunk_background_psnr"] = _nanmean_lists([r["chunk_background_psnr"] for r in records])
  summary["by_kind"] = {kind: {"clips": len(group), **metrics.summarize(group, SCALAR_KEYS)}
                        for kind in synthetic.EDIT_KINDS
                        if (group := [r for r in records if r["edit"]["kind"] == kind])}
  timed = [r for r in records if r["time_s"] is not None]
  later = timed[1:] or timed  # the first clip compiles
  summary["fps"] = sum(r["frames"] for r in later) / sum(r["time_s"] for r in later) if later else None
  summary["first_frame_s"] = timed[0]["first_frame_s"] if timed else None
  summary["latency_s"] = float(np.mean([r["first_frame_s"] for r in timed[1:]])) if len(timed) > 1 else None
  summary["clips"] = len(records)
  return summary


# ---------------------------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.evaluate", description=__doc__)
  run = parser.add_argument_group("benchmark")
  run.add_argument("--editor", required=True, choices=EDITORS, help="what edits the clips")
  run.add_argument("--split", default="test", choices=synthetic.SPLITS, help="benchmark split (default: test)")
  run.add_argument("--clips", type=int, default=16, help="clips to score (default: 16)")
  native = default_model.native_or_none()
  for field, text in (("frames", "frames per clip"), ("height", "frame height, a multiple of 16"),
                      ("width", "frame width, a multiple of 16")):
    value = f"{getattr(native, field)}, the default DiT's native {field}," if native else \
        f"the default DiT's native {field}"
    run.add_argument(f"--{field}", type=int, help=f"{text} (default: {value} when it edits; else "
                     f"{BENCHMARK_SIZE[field]})")
  run.add_argument("--seed", type=int, default=0,
                   help="first clip index: clip i is example seed + i of the split, edited with noise key seed + i")
  run.add_argument("--json", help="write the records and summary here (JSON)")
  run.add_argument("--overwrite", action="store_true", help="replace an existing --json")
  run.add_argument("--videos", help="write side-by-side mp4s (source | edit | target) of the first clips here")
  run.add_argument("--video-clips", type=int, default=4, help="how many clips --videos writes (default: 4)")
  models = parser.add_argument_group("models (stream and sampler editors; a model left out is the default model's "
                                     f"part, under {default_model.shown(default_model.directory())})")
  models.add_argument("--dit", help="converted DiT directory")
  add_autoencoder_options(models, "the default model's vae")
  models.add_argument("--text-encoder", help="converted umT5 directory (embeds each clip's instruction)")
  models.add_argument("--dtype", choices=CLI_DTYPES,
                      help="compute dtype of the models (default: bfloat16 on GPU, float32 elsewhere)")
  add_stream_options(parser.add_argument_group("stream editor (as python -m liveedit_jax.stream)"))
  sampler = parser.add_argument_group("sampler editor (Stage 1/2 models)")
  sampler.add_argument("--steps", type=int, default=50, help="Euler steps (default 50: 100 NFE with guidance)")
  sampler.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (1: none)")
  sampler.add_argument("--shift", type=float, default=GENERATOR_SHIFT, help="σ-grid shift")
  sampler.add_argument("--chunk-causal", action="store_true",
                       help="the Stage 2 chunk-causal model (chunks of 3 latent frames); default bidirectional")
  args = parser.parse_args(argv)
  for name in ("clips", "frames", "steps"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      parser.error(f"--{name} must be positive, got {getattr(args, name)}")
  if args.video_clips < 0:
    parser.error(f"--video-clips must be ≥ 0, got {args.video_clips}")
  if args.seed < 0:
    parser.error(f"--seed must be ≥ 0 (it is the first clip's index), got {args.seed}")
  # The model editors' directories, each given or the default model's (its files checked); None for the oracles.
  args.models = None
  if args.editor in ("stream", "sampler"):
    args.models = default_model.resolve(args.dit, args.vae, args.text_encoder)
  native = default_model.native() if args.models and "dit" in args.models.defaults else None
  for field, benchmark in BENCHMARK_SIZE.items():
    if getattr(args, field) is None:
      setattr(args, field, getattr(native, field) if native else benchmark)
  return args


def check_models(args: argparse.Namespace) -> tuple[DiTConfig, autoencoders.Config, autoencoders.Config,
                                                   UMT5Config]:
  """Reads the configs (no weights) and checks that they fit each other, the frame size and count. Returns the
  (DiT, encoder, decoder, text encoder) configs."""
  dit, encoder, text = default_model.check_models(args.models, args.height, args.width)
  decoder = check_decoder(args, encoder)
  chunk = StreamConfig().chunk_frames
  k = stream_chunk_sizes(StreamConfig(), decoder)[1] // chunk  # frames a latent decodes to after the first
  if (args.frames - 1) % k:
    raise ValueError(f"--frames {args.frames}: the {args.editor} editor needs 1 + {k}·n frames (1 + n latents: the "
                     f"first decodes to one frame, each later one to {k}), e.g. {1 + k * max(1, args.frames // k)}")
  latent_frames = 1 + (args.frames - 1) // k
  if args.editor == "sampler" and args.chunk_causal and latent_frames % chunk:
    raise ValueError(f"--frames {args.frames} gives {latent_frames} latent frames; --chunk-causal needs a "
                     f"multiple of {chunk} (e.g. --frames {1 + k * (chunk * max(1, latent_frames // chunk) - 1)})")
  return dit, encoder, decoder, text


def check_sizes(args: argparse.Namespace) -> None:
  for name in ("height", "width"):
    value = getattr(args, name)
    if value <= 0 or value % 16:
      raise ValueError(f"--{name} {value} must be a positive multiple of 16 (the benchmark's frames)")
  if args.json:
    cli.refuse_existing(args.json, args.overwrite, "--json")


def build_editor(args: argparse.Namespace) -> tuple[Editor, dict[str, Any]]:
  """The editor and the geometry `score_clip` needs for it."""
  geometry: dict[str, Any] = {"chunk_sizes": (9, 12)}
  if args.editor == "source":
    return source_editor, geometry
  if args.editor == "target":
    return target_editor, geometry
  _, encoder, decoder, _ = check_models(args)
  dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
  dirs = args.models
  defaults = f", the default model's {', '.join(dirs.defaults)}" if dirs.defaults else ""
  nouns = autoencoders.kind_of(encoder).noun
  if args.decoder is not None:
    nouns += f" encoder, {autoencoders.kind_of(decoder).noun} decoder"
  with cli.status(f"loading the DiT, {nouns} and text encoder ({dtype}{defaults})"):
    split = args.decoder is not None
    vae = autoencoders.load(dirs.vae, compute_dtype=dtype, side="encoder" if split else "both")
    models = Models(*load_dit(dirs.dit, compute_dtype=dtype), vae.config, vae.params,
                    load_text_encoder(dirs.text_encoder, dtype),
                    autoencoders.load(args.decoder, compute_dtype=dtype, side="decoder") if split else None)
  options = stream_options(args)
  _, ph, pw = models.dit_config.patch_size
  s = encoder.spatial_factor
  sizes = stream_chunk_sizes(options, decoder)
  # Decoded latent i ends at frame 4i with either decoder, so the edit's tokens map to frames as Wan's do.
  geometry = {"chunk_sizes": sizes, "pixels_per_token": (s * ph, s * pw),
              "temporal_factor": sizes[1] // options.chunk_frames, "chunk_frames": options.chunk_frames}
  if args.editor == "stream":
    return model_editor(edit_stream, models, options), geometry
  sampler = SamplerOptions(steps=args.steps, guidance=args.guidance, shift=args.shift,
                           chunk_frames=options.chunk_frames if args.chunk_causal else None)
  return model_editor(edit_sampler, models, sampler), geometry


def write_side_by_side(path: Path, example: synthetic.EditExample, edited: np.ndarray) -> None:
  """An mp4 of source | edit | target, side by side."""
  frames = np.concatenate([example.source, edited, example.target], axis=2)
  with cli.atomic_output(path) as tmp, open_writer(str(tmp), frames.shape[2], frames.shape[1],
                                                   synthetic.FPS) as writer:
    writer.write(frames)


def _fmt(x: float | None, digits: int = 2) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def format_table(summary: dict[str, Any], args: argparse.Namespace) -> str:
  """The end-of-run table: one row per edit kind and one for all clips, then the speed."""
  lines = [f"editor {args.editor} · split {args.split} · {summary['clips']} clips (indices {args.seed}–"
           f"{args.seed + summary['clips'] - 1}) of {args.frames}×{args.height}×{args.width}",
           f"{'kind':<11}{'clips':>6}" + "".join(f"{title:>12}" for _, title, _ in TABLE_COLUMNS)]
  rows = [(kind, group) for kind, group in summary["by_kind"].items()] + [("all", summary)]
  for kind, group in rows:
    clips = group["clips"]
    lines.append(f"{kind:<11}{clips:>6}" + "".join(f"{_fmt(group.get(key), d):>12}" for key, _, d in TABLE_COLUMNS))
  if summary["fps"] is not None:
    latency = "" if summary["latency_s"] is None else f", {summary['latency_s']:.2f} s on later clips"
    over = "after the first clip" if summary["clips"] > 1 else "first clip, compiles included"
    lines.append(f"speed: {summary['fps']:.1f} frames/s ({over}); first edited frame "
                 f"{summary['first_frame_s']:.2f} s on clip 0 (compiles included){latency}")
  return "\n".join(lines)


def _write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes to a temporary name beside `path`, then renames: a failed run never leaves half a file."""
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  with cli.atomic_output(path) as tmp:
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the editor over the clips; returns {"config", "records", "summary"} (also written to --json)."""
  check_sizes(args)
  synthetic.example_seed(args.split, args.seed + args.clips - 1)  # the last index is in the split's range
  editor, geometry = build_editor(args)
  videos = Path(args.videos) if args.videos else None
  if videos is not None:
    videos.mkdir(parents=True, exist_ok=True)
  chunk_sizes = frame_chunks(args.frames, geometry.pop("chunk_sizes"))
  records = []
  with cli.progress(total=args.clips, desc=f"evaluate {args.editor}", unit="clip") as bar:
    for i in range(args.clips):
      example = synthetic.make_example(args.split, args.seed + i, frames=args.frames, height=args.height,
                                       width=args.width)
      edited = editor(example)
      record = score_clip(example, edited, chunk_sizes, **geometry)
      records.append(record)
      if videos is not None and i < args.video_clips:
        write_side_by_side(videos / f"{args.split}-{example.index:06d}-{example.edit.kind}.mp4", example,
                           edited.frames)
      bar.set_postfix_str(f"bg {_fmt(record['background_psnr'], 1)} dB, edit {_fmt(record['edit_psnr'], 1)} dB")
      bar.update()
  config = {k: v for k, v in vars(args).items() if k not in ("json", "overwrite", "videos", "video_clips", "models")}
  if args.models is not None:  # the directories that ran, and which of them were the default model's
    config.update(dit=args.models.dit, vae=args.models.vae, decoder=decoder_dir(args),
                  text_encoder=args.models.text_encoder, default_parts=list(args.models.defaults))
  result = {"config": config, "records": records, "summary": summarize(records)}
  if args.json:
    _write_json(args.json, result)
  return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  result = evaluate(args)
  print(format_table(result["summary"], args))
  return result


def run(argv: Sequence[str] | None = None) -> None:
  """`main` with user mistakes as one line on stderr and an exit status (`cli.run`: 1, usage errors 2)."""
  cli.run(main, argv)


if __name__ == "__main__":
  run()
