"""Streaming video editing from the command line: read frames, edit them chunk by chunk, write them as they come.

    python -m liveedit_jax.stream --input synthetic:7 --output out.mp4 --side-by-side   # the default model
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make the red circle blue"
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make it snowy" \\
        --dit checkpoints/liveedit-1.3b --vae checkpoints/wan2.1-vae \\
        --text-encoder checkpoints/umt5-xxl --prompt-cache cache/prompts
    python -m liveedit_jax.stream --input webcam:/dev/video0 --output - --context snowy.npy ... | ffplay \\
        -f rawvideo -pixel_format rgb24 -video_size 832x480 -framerate 16 -

Per chunk of 3 latent frames (9 video frames for the first chunk, 12 for each later one; Wan's VAE encodes the
first frame alone): VAE encode → `stream_step` (the distilled DiT's denoising steps against the KV cache) → VAE
decode → write and flush. Every step is compiled once for the first chunk and once for the rest, with its
state donated, so a stream of any length runs at constant memory. A partial last chunk is padded by repeating its
last frame and only its real frames are written. The prompt is embedded once before streaming (through the
prompt cache when given, so the 11 GB text encoder is loaded only on a miss and freed before the DiT loads), or a
precomputed [1, L, text_dim] embedding is read (`--context`).

Models: each of --dit, --vae and --text-encoder left out is the default model's part (`default_model.py`: the
procedural benchmark's small editor shipped in the package, or the directory LIVEEDIT_DEFAULT_MODEL names), its
files checked against their sha256 first; with the default DiT, --height, --width and --fps default to its native
size (128×128 at 16 fps), else to Wan's 480×832 at 16 fps. Parts that do not fit each other (latent channels,
text width, sizes the VAE and the DiT's patch divide) are refused in one line naming both directories. Prompt
words the text encoder's tokenizer does not know (they read as <unk>) get a warning naming them.

Inputs and outputs are described in `video_io.py`: a video file, `webcam:/dev/videoN`, raw rgb24 on stdin (`-`)
or in a .rgb file (both with `--input-size WxH`), or `synthetic:SEED[:FRAMES]`, the source clip of the
benchmark's test example SEED (`synthetic.make_example`, 33 frames unless FRAMES), whose instruction is the
prompt when --prompt is left out; a video file, raw rgb24 to stdout (`-`) or to a .rgb file. `--side-by-side`
writes each frame as source | edit, twice as wide.
An existing output file is refused unless `--overwrite`; the output is written under a temporary name and takes
its own name when the first chunk is written, so a run that fails earlier leaves nothing there.

Progress goes to stderr: a line as each model starts and ends loading (its size on disk, its parameter count), a
line before each of the two chunks that compile (the first chunk and the first later one compile their own VAE
and DiT steps), then one line per chunk: frames, ms of encode / DiT / decode (each waited for, so they add up to
the chunk's compute), frames per second over the whole chunk (reading and writing included), the seconds spent
compiling (chunks 0 and 1), the time left when the input's length is known and, with the mask cache on, the
fraction of tokens the chunk recomputed and the IoU of its mask with the previous chunk's. On a terminal a bar
(frames done of the total, frames/s, ETA) runs below the lines. Frames within a chunk attend to each other, so the
output of a run stopped at a chunk boundary (Ctrl-C, SIGTERM, `--max-frames`) is a prefix of the full run's.
Errors are one line (`--debug` or LIVEEDIT_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from liveedit_jax import cli, default_model
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.streaming import StreamConfig, StreamState, init_stream, stream_step
from liveedit_jax.tokenizer import SPIECE_FILE, TOKENIZER_JSON, Tokenizer, clean_prompt
from liveedit_jax.umt5 import encode_prompts, load_text_encoder, text_encoder_identity
from liveedit_jax.vae import VAEConfig, VAEStreamState, init_vae_stream, load_vae, vae_decode_step, vae_encode_step
from liveedit_jax.video_io import (FrameReader, RawWriter, VideoIOError, VideoWriter, count_frames, is_raw,
                                   is_synthetic, open_reader, open_writer, parse_size, to_float, to_uint8)

# Jitted once per process (the configs are static and hashable), so runs in one process share compilations.
vae_encode = jax.jit(vae_encode_step, static_argnums=0, static_argnames="first", donate_argnums=2)
vae_decode = jax.jit(vae_decode_step, static_argnums=0, static_argnames="first", donate_argnums=2)

# Frame size and rate with a converted DiT (--dit): Wan's.
CONVERTED_SIZE = {"height": 480, "width": 832, "fps": 16.0}


def add_stream_options(group: argparse._ArgumentGroup) -> argparse._ArgumentGroup:
  """The streaming options (mask cache, KV cache refresh, cache frames), shared with `python -m
  liveedit_jax.evaluate --editor stream`; `stream_options` reads them back."""
  group.add_argument("--prune", type=float, default=0.7, help="mask cache: fraction of tokens reused")
  group.add_argument("--cache-on", choices=("self_attn", "ffn", "none"), default="self_attn",
                     help="mask cache placement; none recomputes every token")
  group.add_argument("--refresh", choices=("clean", "none"), default="clean",
                     help="KV cache refresh: a forward on the clean output (clean) or the last denoising forward")
  group.add_argument("--cache-frames", type=int, default=18, help="past latent frames attended to")
  group.add_argument("--sink-frames", type=int, default=0, help="of those, first frames never evicted")
  return group


def stream_options(args: argparse.Namespace) -> StreamConfig:
  """The StreamConfig of `add_stream_options`' flags."""
  return StreamConfig(cache_frames=args.cache_frames, sink_frames=args.sink_frames, refresh=args.refresh,
                      mask_cache=MaskCacheConfig(prune_ratio=args.prune, cache_on=args.cache_on))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  """The options; the models left out are resolved to the default model's (its files checked) in `args.models`,
  and --height, --width, --fps to the default DiT's native size or Wan's."""
  native = default_model.native_or_none()

  def default(field: str) -> str:
    value = f"{getattr(native, field):g}, the default model's native size," if native else \
        f"the default model's native {field}"
    return f"(default: {value} without --dit; {CONVERTED_SIZE[field]:g} with --dit)"

  default_dir = f"the default model's, {default_model.shown(default_model.directory())}/"
  parser = cli.ArgumentParser(prog="python -m liveedit_jax.stream", description=__doc__)
  io = parser.add_argument_group("input and output")
  io.add_argument("--input", required=True, help="video file, webcam:/dev/videoN, - (raw rgb24 on stdin), *.rgb, "
                  "or synthetic:SEED[:FRAMES] (the benchmark's test example SEED)")
  io.add_argument("--input-size", help="WxH of raw rgb24 input (- or *.rgb)")
  io.add_argument("--output", required=True, help="video file (.mp4: H.264), - (raw rgb24 on stdout) or *.rgb")
  io.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  io.add_argument("--side-by-side", action="store_true",
                  help="write source | edit side by side (frames twice the model's width)")
  io.add_argument("--height", type=int, help=f"frame height the model runs at, a multiple of 16 {default('height')}")
  io.add_argument("--width", type=int, help=f"frame width the model runs at, a multiple of 16 {default('width')}")
  io.add_argument("--fps", type=float, help="frame rate of the output; video files and webcams are resampled to "
                  f"it {default('fps')}")
  io.add_argument("--max-frames", type=int, help="stop after this many input frames")
  models = parser.add_argument_group("models and prompt (a model left out is the default model's part)")
  models.add_argument("--dit", help=f"converted DiT directory (python -m convert.wan_dit; default: {default_dir}dit)")
  models.add_argument("--vae", help=f"converted VAE directory (python -m convert.wan_vae; default: {default_dir}vae)")
  prompt = models.add_mutually_exclusive_group()
  prompt.add_argument("--text-encoder", help="converted umT5 directory (python -m convert.umt5; default: "
                      f"{default_dir}text_encoder)")
  prompt.add_argument("--context", help="precomputed prompt embedding, .npy of shape [1, L, text_dim], instead of "
                      "a text encoder")
  models.add_argument("--prompt", help="the edit instruction, e.g. 'make it snowy' (default with a synthetic:SEED "
                      "input: the example's own)")
  models.add_argument("--prompt-cache", help="directory of cached prompt embeddings (not with --context)")
  models.add_argument("--dtype", choices=("bfloat16", "float32"),
                      help="compute dtype of the DiT and VAE (default: bfloat16 on GPU, float32 elsewhere)")
  stream = add_stream_options(parser.add_argument_group("streaming"))
  stream.add_argument("--seed", type=int, default=0, help="seed of the denoising noise")
  args = parser.parse_args(argv)
  if not args.context and not args.prompt and not is_synthetic(args.input):
    parser.error("--prompt is needed (the edit instruction), unless --context gives its embedding or the input is "
                 "synthetic:SEED")
  if args.prompt_cache and args.context:
    parser.error("--prompt-cache caches the text encoder's embeddings; it does not apply to --context")
  if args.max_frames is not None and args.max_frames <= 0:
    parser.error(f"--max-frames must be positive, got {args.max_frames}")
  if args.fps is not None and args.fps <= 0:
    parser.error(f"--fps must be positive, got {args.fps}")
  args.models = default_model.resolve(args.dit, args.vae, args.text_encoder, text=not args.context)
  native = default_model.native() if "dit" in args.models.defaults else None
  for field, converted in CONVERTED_SIZE.items():
    if getattr(args, field) is None:
      setattr(args, field, getattr(native, field) if native else converted)
  return args


def _model_name(args: argparse.Namespace, part: str, noun: str) -> str:
  """"the DiT", or "the default model's DiT" when it is the default's part."""
  return f"the default model's {noun}" if part in args.models.defaults else f"the {noun}"


def _unk_id(tokenizer: Tokenizer) -> int:
  """<unk>'s id, read from the file the tokenizer's backend reads (the Tokenizer does not expose it)."""
  if tokenizer.backend == "sentencepiece":
    import sentencepiece  # noqa: PLC0415

    return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer.directory / SPIECE_FILE)).unk_id()
  from tokenizers import Tokenizer as HFTokenizer  # noqa: PLC0415 (the tokenizers backend is optional)

  return HFTokenizer.from_file(str(tokenizer.directory / TOKENIZER_JSON)).token_to_id("<unk>")


def unknown_words(tokenizer: Tokenizer, prompt: str) -> list[str]:
  """The words of the cleaned prompt that the tokenizer maps, whole or in part, to <unk> (each once, in order)."""
  unk = _unk_id(tokenizer)
  return list(dict.fromkeys(w for w in clean_prompt(prompt).split(" ") if w and unk in tokenizer.ids(w)[:-1]))


def warn_unknown_words(tokenizer: Tokenizer, prompt: str, where: str) -> None:
  """A warning naming the prompt's words the tokenizer of the text encoder `where` does not know."""
  if words := unknown_words(tokenizer, prompt):
    warnings.warn(f"the prompt's words {', '.join(map(repr, words))} are not in the vocabulary of the text encoder "
                  f"({where}): each reads as <unk>, so the edit cannot follow them", stacklevel=2)


def param_count(params: Any) -> int:
  return sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(params))


def load_logged(what: str, path: str, load: Callable[[], Any], params: Callable[[Any], Any]) -> Any:
  """`load()`, between two status lines naming `what`, its directory and size, and its parameter count."""
  with cli.status(f"loading {what} from {path} ({cli.format_bytes(cli.disk_bytes(path))})") as s:
    loaded = load()
    s.note(f"{cli.format_count(param_count(params(loaded)))} parameters")
  return loaded


def load_context(args: argparse.Namespace, dit: DiTConfig) -> np.ndarray:
  """The prompt embedding [1, L ≤ text_len, text_dim], from --context or the text encoder (freed on return).

  A prompt the encoder embeds (not read from the cache) is checked for words its tokenizer does not know.
  """
  if args.context:
    source = args.context
    if not Path(source).is_file():
      raise FileNotFoundError(f"{source}: context embedding not found")
    context = np.load(source)
    # np.save writes ml_dtypes' bfloat16 (the prompt cache's dtype) as 2-byte void.
    if context.dtype == np.dtype("V2"):
      context = context.view(ml_dtypes.bfloat16)
  else:
    path, source = args.models.text_encoder, args.models.label("text_encoder")
    cache = args.prompt_cache and PromptCache(args.prompt_cache, text_encoder_identity(path))
    if cache and (cached := cache.get(args.prompt)) is not None:
      cli.say(f"prompt embedding read from the cache {args.prompt_cache}")
      context = cached[None]
    else:
      encoder = load_logged(_model_name(args, "text_encoder", "text encoder"), path,
                            lambda: load_text_encoder(path), lambda encoder: encoder.params)
      warn_unknown_words(encoder.tokenizer, args.prompt, source)
      if cache:
        with cli.status(f"embedding the prompt (stored in the cache {args.prompt_cache})"):
          context = cache.get_or_encode(encoder, [args.prompt])
      else:
        with cli.status("embedding the prompt"):
          context = np.asarray(jax.device_get(encode_prompts(encoder, [args.prompt])))
      del encoder
  if (context.ndim != 3 or context.shape[0] != 1 or not 1 <= context.shape[1] <= dit.text_len
      or context.shape[2] != dit.text_dim or not jnp.issubdtype(context.dtype, jnp.floating)):
    raise ValueError(f"{source}: prompt embedding has shape {list(context.shape)} ({context.dtype}), expected a "
                     f"float [1, L ≤ {dit.text_len}, {dit.text_dim}] for the DiT in {args.models.label('dit')}")
  return context


def _raise_on_sigterm(signum, frame):
  # SystemExit unwinds through the `finally` blocks, which finalise the output file.
  raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds():
  """Turns SIGTERM into SystemExit for the duration (signal handlers can only be set from the main thread)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _elapsed_ms(start: float) -> float:
  return (time.perf_counter() - start) * 1e3


@dataclasses.dataclass(frozen=True)
class Models:
  """The loaded DiT and VAE (params on the default device)."""

  dit_config: DiTConfig
  dit_params: Any
  vae_config: VAEConfig
  vae_params: Any


PHASES = ("VAE encode", "DiT", "VAE decode")


def edit_chunk(models: Models, vae_state: VAEStreamState, state: StreamState, frames: np.ndarray, first: bool,
               on_phase: Callable[[str], None] = lambda phase: None):
  """One chunk through encode → DiT → decode, each waited for so that it can be timed.

  frames: uint8 [T, H, W, 3] (T = 9 for the first chunk, 12 after). on_phase: called with each of PHASES as it
  starts. Returns (vae_state, state, edited frames float32 [T, H, W, 3] in [−1, 1] on the host, (encode, DiT,
  decode) milliseconds, (encode, DiT, decode) seconds of compilation).
  """
  m = models
  timers = [cli.CompileTimer() for _ in PHASES]
  start = time.perf_counter()
  on_phase(PHASES[0])
  with timers[0]:
    vae_state, latents = vae_encode(m.vae_config, m.vae_params, vae_state, jax.device_put(to_float(frames)[None]),
                                    first=first)
    latents.block_until_ready()
  encode_ms, start = _elapsed_ms(start), time.perf_counter()
  on_phase(PHASES[1])
  with timers[1]:
    edited, state = stream_step(m.dit_config, m.dit_params, state, latents)
    edited.block_until_ready()
  dit_ms, start = _elapsed_ms(start), time.perf_counter()
  on_phase(PHASES[2])
  with timers[2]:
    vae_state, decoded = vae_decode(m.vae_config, m.vae_params, vae_state, edited, first=first)
    decoded = jax.device_get(decoded)[0]
  return (vae_state, state, decoded, (encode_ms, dit_ms, _elapsed_ms(start)), tuple(t.seconds for t in timers))


def _compile_note(compile_s: tuple[float, ...]) -> str:
  spent = [(name, t) for name, t in zip(("encode", "dit", "decode"), compile_s) if t >= 0.05]
  if not spent:
    return ""
  return "  compiled " + ", ".join(f"{name} {t:.1f} s" for name, t in spent)


def run_stream(models: Models, state: StreamState, vae_state: VAEStreamState, reader: FrameReader,
               writer: RawWriter | VideoWriter, frames: np.ndarray, chunk_sizes: tuple[int, int],
               limit: float, total: int | None = None, side_by_side: bool = False) -> None:
  """Edits chunks until the input ends (or `limit` input frames), writing each chunk's real frames at once.

  frames: the first chunk, already read. total: the input's frame count when known (for the time left).
  side_by_side: write source | edit frames [T, H, 2W, 3]. One progress line per chunk and a summary go to stderr,
  with a bar on a terminal.
  """
  index, mask = 0, None
  stream_start = steady_start = time.perf_counter()
  bar = cli.progress(total=total, desc="stream", unit="frame")
  try:
    while len(frames):
      chunk_start = time.perf_counter()
      real, size = len(frames), chunk_sizes[index > 0]
      padded = np.concatenate([frames, np.repeat(frames[-1:], size - real, axis=0)])
      if index < 2:  # the first chunk and the first later one run steps of their own shapes: compiled now
        cli.say(f"chunk {index}: compiling and running its VAE encode, DiT step and VAE decode ...")
      on_phase = lambda phase, index=index: bar.set_description(f"chunk {index}: {phase}")  # noqa: E731
      vae_state, state, edited, ms, compile_s = edit_chunk(models, vae_state, state, padded, first=index == 0,
                                                           on_phase=on_phase)
      edited = to_uint8(edited[:real])
      writer.write(np.concatenate([frames, edited], axis=2) if side_by_side else edited)
      bar.update(real)
      report = (f"chunk {index}: frames {reader.frames_read - real}-{reader.frames_read - 1}  encode {ms[0]:.1f} ms"
                f"  dit {ms[1]:.1f} ms  decode {ms[2]:.1f} ms  {real / (time.perf_counter() - chunk_start):.1f} fps"
                + _compile_note(compile_s))
      if total is not None and index > 1:  # the rate of the chunks after the two that compile
        left = max(0, total - writer.frames_written)
        rate = (writer.frames_written - eta_frames) / (time.perf_counter() - eta_start)
        report += f"  {cli.format_seconds(left / rate)} left"
      if state.tokens is not None:
        report += "  mask: all tokens" if mask is None else (
            f"  mask: {mask[0]:.0%} tokens recomputed" + ("" if index == 1 else f", IoU {mask[1]:.2f}"))
        # The mask the step chose for the next chunk, from this chunk's edit.
        stats = jax.device_get(state.tokens.stats)
        mask = (float(stats.active_fraction), float(stats.iou_previous[0]))
      cli.say(report)
      if index == 0:
        steady_start = time.perf_counter()  # chunk 0 compiles; the summary's rate starts after it
      if index == 1:
        eta_start, eta_frames = time.perf_counter(), writer.frames_written
      bar.set_description("stream")
      index += 1
      if real < size:
        break
      frames = reader.read(int(min(chunk_sizes[1], limit - reader.frames_read)))
  finally:
    bar.close()
    later = writer.frames_written - min(writer.frames_written, chunk_sizes[0])
    rate = f", {later / (time.perf_counter() - steady_start):.1f} fps after chunk 0" if later else ""
    cli.say(f"wrote {writer.frames_written} frames to {writer.name} in "
            f"{time.perf_counter() - stream_start:.1f} s{rate}")


def load_models(args: argparse.Namespace, dtype: str) -> Models:
  """The DiT and the VAE in `dtype`, each between two status lines."""
  dirs = args.models
  dit = load_logged(_model_name(args, "dit", "DiT"), dirs.dit, lambda: load_dit(dirs.dit, compute_dtype=dtype),
                    lambda m: m[1])
  vae = load_logged(_model_name(args, "vae", "VAE"), dirs.vae, lambda: load_vae(dirs.vae, compute_dtype=dtype),
                    lambda m: m[1])
  return Models(*dit, *vae)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  cli.refuse_existing(args.output, args.overwrite)
  dit_config, vae_config, _ = default_model.check_models(args.models, args.height, args.width)
  input_size = parse_size(args.input_size) if args.input_size else None
  options = stream_options(args)
  height, width = args.height, args.width
  c, k = options.chunk_frames, vae_config.temporal_factor
  chunk_sizes = (1 + k * (c - 1), k * c)  # video frames of the first chunk and of each later one
  limit = args.max_frames or float("inf")
  dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")

  with contextlib.ExitStack() as stack:
    stack.enter_context(_sigterm_unwinds())
    reader = stack.enter_context(open_reader(args.input, width, height, args.fps, input_size))
    writer = stack.enter_context(open_writer(args.output, 2 * width if args.side_by_side else width, height,
                                             args.fps, overwrite=args.overwrite))
    # The first chunk is read before the models load, so an unreadable input fails in seconds.
    frames = reader.read(int(min(chunk_sizes[0], limit)))
    if not len(frames):
      raise VideoIOError(f"{reader.name}: no frames to read")
    if not args.context and not args.prompt:  # parse_args allows this for a synthetic input only
      args.prompt = reader.example.instruction
      cli.say(f"prompt: {args.prompt!r}, the instruction of {reader.name} (--prompt replaces it)")
    total = count_frames(args.input, width, height, args.fps, input_size)
    if total is not None and args.max_frames:
      total = min(total, args.max_frames)
    context = load_context(args, dit_config)
    models = load_models(args, dtype)
    s = vae_config.spatial_factor
    state = init_stream(models.dit_config, models.dit_params, context, latent_height=height // s,
                        latent_width=width // s, options=options, rng=jax.random.key(args.seed))
    vae_state = init_vae_stream(models.vae_config, 1, height, width)
    exact = is_raw(args.input) or is_synthetic(args.input)
    length = "" if total is None else f" ({'' if exact else 'about '}{total} frames)"
    cli.say(f"streaming {reader.name}{length} to {writer.name} at {width}×{height}, {args.fps:g} fps, {dtype}, "
            f"chunks of {chunk_sizes[0]} then {chunk_sizes[1]} frames" + (", source | edit" if args.side_by_side
                                                                            else ""))
    run_stream(models, state, vae_state, reader, writer, frames, chunk_sizes, limit, total, args.side_by_side)


if __name__ == "__main__":
  cli.run(main)
