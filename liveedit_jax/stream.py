"""Streaming video editing from the command line: read frames, edit them chunk by chunk, write them as they come.
(The jitted step it runs per chunk is `stream_step.py`'s `stream_step`.)

    python -m liveedit_jax.stream --input synthetic:7 --output out.mp4 --side-by-side   # the default model
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make the red circle blue"
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make it snowy" \\
        --dit checkpoints/liveedit-1.3b --vae checkpoints/wan2.1-vae \\
        --text-encoder checkpoints/umt5-xxl --prompt-cache cache/prompts
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make it snowy" \\
        --vae checkpoints/wan2.1-vae --decoder checkpoints/taew2_1 ...      # TAEHV decodes (python -m convert.taehv)
    python -m liveedit_jax.stream --input webcam:/dev/video0 --output - --context snowy.npy ... | ffplay \\
        -f rawvideo -pixel_format rgb24 -video_size 832x480 -framerate 16 -
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make the circle red" \\
        --prompt-at 48:"make the circle green" --prompt-schedule later.txt --recache
    python -m liveedit_jax.stream --input in.mp4 --output out.mp4 --prompt "make it snowy" --devices 2 ...

Per chunk of 3 latent frames (9 video frames for the first chunk, 12 for each later one; Wan's VAE encodes the first
frame alone): encode → `stream_step` (the distilled DiT's denoising steps against the KV cache) → decode → write and
flush. A TAEHV encoder reads 12 frames for every chunk, the first one included, and looks 3 frames further ahead than
Wan's, so the stream writes each frame 3 frames after reading it (9 then 12 frames written per chunk, as with Wan's;
output frame j is the edit of input frame j whichever the encoder, `autoencoders.py`), and after the input's end one
more chunk of padding writes the 3 frames still held. The three stages are dispatched without waiting for each other
(JAX runs them asynchronously), while a reader thread reads the next chunks and a writer thread waits for each
finished chunk, converts it to uint8 and writes it, each through a queue of 2 chunks: reading, the device's work and
writing overlap. `--sync-stages` instead waits for each stage and reads, edits and writes one chunk after the other
(the same frames, bit for bit), to time the stages. Every step is compiled ahead of time, before the first chunk, once
for the first chunk and once for the rest (concurrently, in a thread pool), with its state donated, so a stream of any
length runs at constant memory and no chunk waits for a compile. The compiled programs are kept in JAX's persistent
compilation cache, $XDG_CACHE_HOME/liveedit_jax/jax_cache (~/.cache/... without XDG_CACHE_HOME), so a second run reads
them from disk instead of compiling (`--no-compile-cache`: neither read nor written). `--kernels` picks the DiT's
attention and norm kernels (pallas: the kernels of liveedit_kernels/ measured fastest on this GPU). A partial last chunk
is padded by repeating its last frame and only its real frames are written. The prompt is embedded once before
streaming (through the prompt cache when given, so the 11 GB text encoder is loaded only on a miss and freed before
the DiT loads), or a precomputed [1, L, text_dim] embedding is read (`--context`).

Devices (`placement.py`): `--devices 1`, the default, runs every stage on JAX's first device. `--devices 2` puts the
autoencoders (encode and decode) on the first device and the DiT (its stream step, prompt switches, the KV history)
on the second, each stage's params and state created there; the latents cross with `jax.device_put`, device to
device, and nothing on the host waits between the stages. A device runs its programs in the order they are
dispatched, so the loop dispatches chunk k's decode after chunk k + 1's encode: while the DiT denoises chunk k, the
autoencoders' device decodes chunk k − 1 and encodes chunk k + 1. With an input of known length (a file) the loop
waits for the reader to have chunk k + 1 (it is ahead of the device); with a live one (a webcam, stdin) it does so
only when that chunk is already read, else it decodes chunk k at once, so no decode waits for the camera. The frames
are those of one device, bit for bit (tests/test_stream_devices.py, 8 fake CPU devices). What to expect, not yet
measured on GPUs: a chunk every max(DiT, encode + decode) instead of every DiT + encode + decode, i.e. on H200s with
the Wan VAE about 217 ms (the DiT with the mask cache 0.7) instead of the stages' 412 ms per 12 frames
(docs/benchmarks.md's figures), up to 1.9× the frame rate (the issue asks ≥ 1.8× on 2 H200s), less with a TAEHV
decoder, where the DiT is already most of a chunk; each chunk's latency grows by the next chunk's encode it waits
behind (Wan's VAE: about 74 ms; TAEHV's less) and the two copies of a chunk's latents between the devices (0.6 MB
each in bfloat16 at 480×832). With --sync-stages the stages run one after another on their devices (each stage's ms
then includes its output's copy to the next stage's device). More devices (the DiT's layers or its denoising steps
split over them) and several hosts (`jax.distributed`) are not built; `placement.py` says why and what they would
take.

A prompt schedule changes the instruction while streaming: `--prompt-at FRAME:TEXT` (repeatable) and
`--prompt-schedule FILE` (a FRAME and its TEXT per line, separated by the first tabs or spaces; blank lines and lines
starting with # skipped; FRAME as given to --prompt-at) each switch to TEXT at the first chunk boundary at or after
input frame FRAME (0-based: chunks' outputs start at frames 0, 9, 21, 33, ... with either encoder; a FRAME past the
input's end, or --max-frames, is never reached; of several due at one boundary the last applies). FRAME must be a
non-negative integer, TEXT not empty, and no two entries may share a FRAME. Every prompt is embedded before streaming
with --prompt (one text encoder load for all, through the prompt cache when given, each checked for unknown words,
each embedded alone so that it does not depend on the others), so a schedule needs the text encoder: not --context.
The switch (`prompt_switch`: new cross-attention K/V; with the mask cache the next chunk recomputes every token) is
compiled ahead of time with the other steps, so a switch compiles nothing. The KV cache's past frames are kept as
edited under the old prompt, or with `--recache` re-cached under the new one from a history of the cached chunks'
latents (kept, one push per chunk, only then; one DiT forward per cached chunk at a switch; not with sink frames).

Autoencoders: --vae encodes and decodes, a converted Wan VAE or TAEHV directory (`python -m convert.wan_vae` or
`python -m convert.taehv`), told apart by the kind in its config.json; --decoder, another such directory, decodes
instead: `--vae checkpoints/wan2.1-vae --decoder checkpoints/taew2_1` is the real-time pair (Wan's encoder,
TAEHV's 11 M-parameter decoder), `--vae checkpoints/taew2_1` uses TAEHV both ways, `--vae checkpoints/taew2_1
--decoder checkpoints/wan2.1-vae` encodes with TAEHV alone. TAEHV's latents are the DiT's (Wan's normalised
latents), so they pass between the sides unchanged. A --decoder whose latent channels, spatial factor or frames per
latent differ from the encoder's is refused in one line naming both directories.

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

Progress goes to stderr: a line as each model starts and ends loading (its size on disk, its parameter count), two
around compiling the steps (the seconds, how many of the 7 executables, 6 without the mask cache, one more with a
prompt schedule and two with --recache, were compiled and how many read from the compilation cache), one line per
prompt switch (before which chunk, at which input frame, the entry, the prompt, the KV policy), then one line per
chunk as it is written: its frames, frames per second
and wall time (since the previous chunk was written: with the stages overlapped, the rate the stream runs at), its
latency (from its frames reaching the stream, read or, for the first chunk, read before the models loaded, to their
being written), with --sync-stages the ms of encode / DiT / decode (each waited for, so they add up to the chunk's
compute), the time left when the input's length is known and, with the mask cache on, the fraction of tokens the
chunk recomputed and the IoU of its mask with the previous chunk's. A summary line ends the run: frames written,
seconds, frames per second after chunk 0 and the time from the start of the run to the first edited frame written.
On a terminal a bar (frames done of the total, frames/s, ETA) runs below the lines. Frames within a chunk attend to
each other, so the output of a run stopped at a chunk boundary (Ctrl-C, SIGTERM, `--max-frames`) is a prefix of the
full run's (with a TAEHV encoder, --max-frames's last chunk excepted: its last latent looks ahead into padding
instead of the frames past the limit); stopped by Ctrl-C or SIGTERM, the run still writes the chunks handed to the
writer (at most 3) and, with --devices 2, the chunk whose decode it held, whole.
Errors are one line (`--debug` or LIVEEDIT_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import signal
import threading
import time
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from liveedit_jax import autoencoders, cli, default_model, prompt_switch
from liveedit_jax.autoencoders import Autoencoder, AutoencoderState, Chunking
from liveedit_jax.config import CLI_DTYPES, KernelFamily, DiTConfig
from liveedit_jax.dit import load_dit
from liveedit_jax.mask_cache import CacheOn, MaskCacheConfig
from liveedit_jax.placement import Placement, abstract, born_on, plan
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.prompt_switch import History, push_history
from liveedit_jax.stream_step import Refresh, StreamConfig, StreamState, init_stream, stream_step
from liveedit_jax.tokenizer import SPIECE_FILE, TOKENIZER_JSON, Tokenizer, clean_prompt
from liveedit_jax.umt5 import encode_prompts, load_text_encoder, text_encoder_identity
from liveedit_jax.video_io import (FrameReader, RawWriter, VideoIOError, VideoWriter, count_frames, is_raw,
                                   is_synthetic, open_reader, open_writer, parse_size, to_float, to_uint8)

# Lowered and compiled by `compile_steps` (the configs are static and hashable, so runs in one process share the
# compilations; `python -m liveedit_jax.evaluate` runs these too).
encode_chunk = jax.jit(autoencoders.encode_step, static_argnums=0, static_argnames="first", donate_argnums=2)
decode_chunk = jax.jit(autoencoders.decode_step, static_argnums=0, static_argnames="first", donate_argnums=2)

# Frame size and rate with a converted DiT (--dit): Wan's.
CONVERTED_SIZE = {"height": 480, "width": 832, "fps": 16.0}


def add_stream_options(group: argparse._ArgumentGroup) -> argparse._ArgumentGroup:
  """The streaming options (mask cache, KV cache refresh, cache frames), shared with `python -m
  liveedit_jax.evaluate --editor stream`; `stream_options` reads them back."""
  group.add_argument("--prune", type=float, default=0.7, help="mask cache: fraction of tokens reused")
  group.add_argument("--cache-on", choices=typing.get_args(CacheOn), default="self_attn",
                     help="mask cache placement; none recomputes every token")
  group.add_argument("--refresh", choices=typing.get_args(Refresh), default="clean",
                     help="KV cache refresh: a forward on the clean output (clean) or the last denoising forward")
  group.add_argument("--cache-frames", type=int, default=18, help="past latent frames attended to")
  group.add_argument("--sink-frames", type=int, default=0, help="of those, first frames never evicted")
  return group


def add_autoencoder_options(group: argparse._ArgumentGroup, default: str) -> argparse._ArgumentGroup:
  """--vae and --decoder, shared with `python -m liveedit_jax.evaluate`; `check_decoder` and `decoder_dir` read
  them back. default: what --vae is when left out."""
  group.add_argument("--vae", help="the autoencoder that encodes and decodes: a converted Wan VAE (python -m "
                     "convert.wan_vae) or TAEHV (python -m convert.taehv) directory, told apart by its config.json; "
                     f"a TAEHV encoder's output runs 3 frames behind its input (default: {default})")
  group.add_argument("--decoder", help="the autoencoder that decodes instead of --vae: a Wan VAE or TAEHV directory, "
                     "e.g. taew2_1 after a Wan VAE's encoder for real time (TAEHV decodes the DiT's latents as they "
                     "are)")
  return group


def decoder_dir(args: argparse.Namespace) -> str:
  """The decoder's directory: --decoder, else --vae's (or the default model's VAE)."""
  return args.decoder or args.models.vae


def check_decoder(args: argparse.Namespace, encoder: autoencoders.Config) -> autoencoders.Config:
  """The decoder's config (no weights read): --decoder's, checked against the encoder's (`encoder`, read from
  --vae), else the encoder's own."""
  if args.decoder is None:
    return encoder
  decoder = autoencoders.read_config(args.decoder)
  autoencoders.check_pair(encoder, decoder, args.models.label("vae"), args.decoder)
  return decoder


def add_run_options(group: argparse._ArgumentGroup) -> argparse._ArgumentGroup:
  """How the stream runs (attention kernels, stage overlap, compilation cache), shared with `python -m
  liveedit_jax.bench e2e`; `main` applies them."""
  group.add_argument("--kernels", choices=typing.get_args(KernelFamily), default="auto",
                     help="the DiT's attention and norm kernels: auto is cuDNN attention on GPU and XLA elsewhere; "
                     "pallas the measured fastest of liveedit_kernels/ on this GPU")
  group.add_argument("--sync-stages", action="store_true",
                     help="wait for each stage of a chunk and give its ms (for profiling), instead of overlapping "
                     "reading, the device's work and writing")
  group.add_argument("--no-compile-cache", action="store_true",
                     help=f"do not keep compiled steps in JAX's persistent compilation cache ({_shown_cache_dir()})")
  group.add_argument("--devices", type=int, default=1,
                     help="devices the stages run on: 1, all on the first; 2, the autoencoders on the first and the "
                     "DiT on the second, pipelined (chunk k+1 encoded and k-1 decoded while chunk k is denoised)")
  return group


def compile_cache_dir() -> Path:
  """Where compiled steps are kept between runs: $XDG_CACHE_HOME/liveedit_jax/jax_cache (~/.cache without it)."""
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "liveedit_jax" / "jax_cache"


def _shown_cache_dir() -> str:
  """compile_cache_dir() as messages write it: ~/... under the home directory."""
  path = compile_cache_dir()
  return f"~/{path.relative_to(Path.home())}" if path.is_relative_to(Path.home()) else str(path)


def enable_compile_cache(directory: Path) -> None:
  """JAX's persistent compilation cache in `directory`, for every program however small or quick to compile (the
  defaults skip those under a second, i.e. most CPU programs). It applies from the process's first compilation
  on, so it is set before anything runs."""
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size floor, none chosen for the disk


def stream_options(args: argparse.Namespace) -> StreamConfig:
  """The StreamConfig of `add_stream_options`' flags."""
  return StreamConfig(cache_frames=args.cache_frames, sink_frames=args.sink_frames, refresh=args.refresh,
                      mask_cache=MaskCacheConfig(prune_ratio=args.prune, cache_on=args.cache_on))


class ScheduledPrompt(NamedTuple):
  """An instruction of the prompt schedule: in effect from the first chunk that starts at or after input frame
  `frame`."""

  frame: int
  prompt: str
  where: str  # what gave it, for messages: "--prompt-at '48:make it green'" or "schedule.txt:3"


def _schedule_entry(frame: str, prompt: str, where: str) -> ScheduledPrompt:
  """One entry from its FRAME and TEXT fields; a ValueError saying what is wrong with them."""
  frame = frame.strip()
  if not (frame.isascii() and frame.isdigit()):  # no sign, no decimal point, no other script's digits
    raise ValueError(f"{where}: FRAME must be a non-negative integer (an input frame index), got {frame!r}")
  if not prompt.strip():
    raise ValueError(f"{where}: the prompt is empty")
  return ScheduledPrompt(int(frame), prompt.strip(), where)


def parse_schedule(prompt_at: Sequence[str], schedule_file: str | None) -> list[ScheduledPrompt]:
  """The entries of --prompt-at FRAME:TEXT options and of a --prompt-schedule file (a FRAME and its TEXT per line,
  separated by the first run of tabs or spaces; blank lines and lines starting with # skipped), sorted by frame.
  A ValueError, in one line, for a malformed entry, an unreadable or empty file, or two prompts for one frame."""
  entries = []
  for value in prompt_at:
    where = f"--prompt-at {value!r}"
    if ":" not in value:
      raise ValueError(f"{where}: expected FRAME:TEXT, e.g. 48:'make the circle green'")
    entries.append(_schedule_entry(*value.split(":", 1), where))
  if schedule_file is not None:
    try:
      lines = Path(schedule_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
      why = getattr(err, "strerror", None) or err  # OSError's strerror leaves out the path given just before
      raise ValueError(f"--prompt-schedule {schedule_file}: cannot read it ({why})") from None
    read = 0
    for number, line in enumerate(lines, 1):
      if not line.strip() or line.lstrip().startswith("#"):
        continue
      fields = line.strip().split(None, 1)
      entries.append(_schedule_entry(fields[0], fields[1] if len(fields) > 1 else "", f"{schedule_file}:{number}"))
      read += 1
    if not read:
      raise ValueError(f"--prompt-schedule {schedule_file}: no entries (expected lines of FRAME TEXT)")
  entries.sort(key=lambda entry: entry.frame)  # stable: equal frames keep their order for the message below
  for before, after in zip(entries, entries[1:]):
    if before.frame == after.frame:
      raise ValueError(f"two prompts for frame {after.frame}: {before.where} and {after.where}")
  return entries


def _add_io_options(parser: argparse.ArgumentParser, default: Callable[[str], str]) -> None:
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


def _add_model_options(parser: argparse.ArgumentParser, default_dir: str) -> None:
  models = parser.add_argument_group("models and prompt (a model left out is the default model's part)")
  models.add_argument("--dit", help=f"converted DiT directory (python -m convert.wan_dit; default: {default_dir}dit)")
  add_autoencoder_options(models, f"{default_dir}vae")
  prompt = models.add_mutually_exclusive_group()
  prompt.add_argument("--text-encoder", help="converted umT5 directory (python -m convert.umt5; default: "
                      f"{default_dir}text_encoder)")
  prompt.add_argument("--context", help="precomputed prompt embedding, .npy of shape [1, L, text_dim], instead of "
                      "a text encoder")
  models.add_argument("--prompt", help="the edit instruction, e.g. 'make it snowy' (default with a synthetic:SEED "
                      "input: the example's own)")
  models.add_argument("--prompt-cache", help="directory of cached prompt embeddings (not with --context)")
  models.add_argument("--prompt-at", action="append", default=[], metavar="FRAME:TEXT",
                      help="switch to the instruction TEXT at the first chunk boundary at or after input frame FRAME "
                      "(0-based; repeatable; a FRAME past the input's end never comes); not with --context")
  models.add_argument("--prompt-schedule", metavar="FILE",
                      help="--prompt-at's entries from a file: one FRAME TEXT per line (FRAME, then tabs or spaces, "
                      "then TEXT); blank lines and lines starting with # are skipped")
  models.add_argument("--recache", action="store_true",
                      help="at a switch, re-cache the KV cache's frames under the new prompt (one DiT forward per "
                      "cached chunk) instead of keeping them as edited under the old one")
  models.add_argument("--dtype", choices=CLI_DTYPES,
                      help="compute dtype of the DiT and autoencoders (default: bfloat16 on GPU, float32 elsewhere)")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Exits through `parser.error` naming the first pair of options that cannot go together; sets
  `args.schedule` and `args.placement`."""
  if not args.context and not args.prompt and not is_synthetic(args.input):
    parser.error("--prompt is needed (the edit instruction), unless --context gives its embedding or the input is "
                 "synthetic:SEED")
  try:
    args.schedule = parse_schedule(args.prompt_at, args.prompt_schedule)
  except ValueError as err:
    parser.error(str(err))
  if args.schedule and args.context:
    parser.error("a prompt schedule (--prompt-at, --prompt-schedule) is embedded by the text encoder; it does not "
                 "apply to --context")
  if args.recache and not args.schedule:
    parser.error("--recache applies at a prompt switch: give --prompt-at or --prompt-schedule")
  if args.recache and args.sink_frames:
    parser.error(f"--recache rebuilds the KV cache at its frames' positions, which sink frames do not keep: it needs "
                 f"--sink-frames 0, got {args.sink_frames}")
  if args.prompt_cache and args.context:
    parser.error("--prompt-cache caches the text encoder's embeddings; it does not apply to --context")
  if args.max_frames is not None and args.max_frames <= 0:
    parser.error(f"--max-frames must be positive, got {args.max_frames}")
  if args.fps is not None and args.fps <= 0:
    parser.error(f"--fps must be positive, got {args.fps}")
  if args.kernels in ("cudnn", "pallas") and jax.default_backend() != "gpu":
    parser.error(f"--kernels {args.kernels} runs on a GPU only; JAX runs on {jax.default_backend()} here (use "
                 f"auto or xla)")
  try:
    args.placement = plan(args.devices)
  except ValueError as err:
    parser.error(str(err))


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
  _add_io_options(parser, default)
  _add_model_options(parser, default_dir)
  stream = add_stream_options(parser.add_argument_group("streaming"))
  stream.add_argument("--seed", type=int, default=0, help="seed of the denoising noise")
  add_run_options(parser.add_argument_group("running"))
  args = parser.parse_args(argv)
  _check_args(parser, args)
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


def _check_context(context: np.ndarray, source: str, args: argparse.Namespace, dit: DiTConfig) -> np.ndarray:
  """`context` if it is a float [1, L ≤ text_len, text_dim] embedding for the DiT, else a ValueError naming
  `source`."""
  if (context.ndim != 3 or context.shape[0] != 1 or not 1 <= context.shape[1] <= dit.text_len
      or context.shape[2] != dit.text_dim or not jnp.issubdtype(context.dtype, jnp.floating)):
    raise ValueError(f"{source}: prompt embedding has shape {list(context.shape)} ({context.dtype}), expected a "
                     f"float [1, L ≤ {dit.text_len}, {dit.text_dim}] for the DiT in {args.models.label('dit')}")
  return context


def embed_prompts(args: argparse.Namespace, prompts: Sequence[str], dit: DiTConfig) -> list[np.ndarray]:
  """Each prompt's embedding [1, text_len, text_dim] from the text encoder (args.models.text_encoder), read from the
  prompt cache (--prompt-cache) when it holds it. The encoder is loaded once, only when some prompt is not cached,
  and freed on return; the prompts it embeds are checked for words its tokenizer does not know. All embeddings have
  one shape and dtype (bfloat16 through the cache, float32 without it)."""
  path, source = args.models.text_encoder, args.models.label("text_encoder")
  cache = args.prompt_cache and PromptCache(args.prompt_cache, text_encoder_identity(path))
  found = {prompt: cache.get(prompt) if cache else None for prompt in dict.fromkeys(prompts)}
  missing = [prompt for prompt, value in found.items() if value is None]
  if cache and len(missing) < len(found):
    count = "" if len(found) == 1 else f"{len(found) - len(missing)} of {len(found)} "
    cli.say(f"{count}prompt embedding{'s' if count else ''} read from the cache {args.prompt_cache}")
  if missing:
    encoder = load_logged(_model_name(args, "text_encoder", "text encoder"), path,
                          lambda: load_text_encoder(path), lambda encoder: encoder.params)
    for prompt in missing:
      warn_unknown_words(encoder.tokenizer, prompt, source)
    what = "the prompt" if len(missing) == 1 else f"{len(missing)} prompts"
    # One prompt at a time, not as a batch: XLA's numerics may depend on the batch size, and a prompt's embedding
    # must not depend on the others (the frames before a switch are then those of a run without the schedule).
    with cli.status(f"embedding {what}" + (f" (stored in the cache {args.prompt_cache})" if cache else "")):
      for prompt in missing:
        found[prompt] = (cache.get_or_encode(encoder, [prompt]) if cache else
                         np.asarray(jax.device_get(encode_prompts(encoder, [prompt]))))[0]
    del encoder
  return [_check_context(found[prompt][None], source, args, dit) for prompt in prompts]


def load_contexts(args: argparse.Namespace, dit: DiTConfig) -> list[np.ndarray]:
  """The embeddings [1, L ≤ text_len, text_dim] of --prompt and then of the schedule's prompts (args.schedule, in
  its order; none without it), from --context (no schedule then) or `embed_prompts` (one encoder load for all)."""
  if not args.context:
    return embed_prompts(args, [args.prompt, *(entry.prompt for entry in args.schedule)], dit)
  if not Path(args.context).is_file():
    raise FileNotFoundError(f"{args.context}: context embedding not found")
  context = np.load(args.context)
  # np.save writes ml_dtypes' bfloat16 (the prompt cache's dtype) as 2-byte void.
  if context.dtype == np.dtype("V2"):
    context = context.view(ml_dtypes.bfloat16)
  return [_check_context(context, args.context, args, dit)]


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
  """The loaded DiT and autoencoders (params committed to their stage's device, `Placement`): `encoder` encodes and
  `decoder` decodes, the same object when one directory does both."""

  dit_config: DiTConfig
  dit_params: Any
  encoder: Autoencoder
  decoder: Autoencoder


# The mask statistics the progress line shows, [active fraction, IoU with the previous mask]: copied out of the
# state by an executable of their own because the state (stats included) is donated to the next chunk's step.
_mask_report = jax.jit(lambda stats: jnp.stack([stats.active_fraction, stats.iou_previous[0]]))


@dataclasses.dataclass(frozen=True)
class Steps:
  """The stream's executables, compiled ahead of time for the devices of `placement`; each tuple holds the first
  chunk's and the later chunks'.

  encode(encoder params, ae_state, video [1, T_read, H, W, 3] in [−1, 1]) → (ae_state, latents [1, c, h, w, z]);
  dit(dit_params, state, latents) → (edited latents [1, c, h, w, z], state); decode(decoder params, ae_state, edited)
  → (ae_state, video [1, T_written, H, W, 3]) (`Chunking`'s counts); mask(state.tokens.stats) → float32 [2]
  (`_mask_report`, one for every chunk: the statistics have the same shapes), None without the mask cache. The states
  are donated, as the jitted functions they are compiled from donate them. With a prompt schedule: switch(dit_params,
  state, context, history) → state (`prompt_switch.switch_step`: new text K/V, with a history the KV cache re-cached;
  history None with the keep policy) and, with --recache, push(history, edited, latents) → history (`push_history`);
  else None. With the mask cache a switched state has first_chunk set, so its next chunk runs `dit[0]`. encode and
  decode run on placement.autoencoder, the others on placement.dit.
  """

  placement: Placement
  encode: tuple[Any, Any]
  dit: tuple[Any, Any]
  decode: tuple[Any, Any]
  mask: Any | None
  switch: Any | None = None
  push: Any | None = None

  def switch_prompt(self, params: Any, state: StreamState, context: jax.Array,
                    history: History | None) -> StreamState:
    """`prompt_switch.switch_prompt` through the compiled `switch` (the arguments it checks were checked before
    streaming: the contexts' shape by `load_contexts`, sink frames with --recache by `parse_args`)."""
    # As switch_prompt does: `first_chunk` is static, cleared for the call (the executable was lowered so), then
    # set when the mask cache is on, so that the next chunk recomputes every token under the new prompt.
    switched = self.switch(params, state.replace(first_chunk=False), context, history)
    return switched.replace(first_chunk=state.tokens is not None)


def compile_steps(models: Models, placement: Placement, state: StreamState, ae_state: AutoencoderState,
                  chunking: Chunking, height: int, width: int, context: jax.Array | None = None,
                  history: History | None = None) -> tuple[Steps, int]:
  """Lowers every step for the first and the later chunks (each state's shape taken from the previous lowering's
  output) on its stage's device, then compiles them concurrently: XLA compiles outside the GIL, and the persistent
  compilation cache, when on, answers each from disk. With `context` (a scheduled prompt's embedding: they all have
  its shape) the prompt switch too, and with `history` (--recache) the switch that re-caches and the history's
  push. Returns (steps, the number of executables)."""
  m, on_ae, on_dit = models, placement.autoencoder, placement.dit
  # Lowered outputs carry no device: each input is placed again, on the device of the stage that takes it.
  ae_state, state, history = abstract(ae_state, on_ae), abstract(state, on_dit), abstract(history, on_dit)
  lowered: list[list[Any]] = [[], [], []]  # per step: first chunk, later chunks
  for later, frames in enumerate(chunking.read):
    video = abstract(jax.ShapeDtypeStruct((1, frames, height, width, 3), jnp.float32), on_ae)
    encode = encode_chunk.lower(m.encoder.config, m.encoder.params, ae_state, video, first=not later)
    ae_state, latents = abstract(encode.out_info, on_ae)
    dit = stream_step.lower(m.dit_config, m.dit_params, state, abstract(latents, on_dit))
    edited, state = abstract(dit.out_info, on_dit)
    decode = decode_chunk.lower(m.decoder.config, m.decoder.params, ae_state, abstract(edited, on_ae),
                                first=not later)
    ae_state = abstract(decode.out_info[0], on_ae)
    for step, low in zip(lowered, (encode, dit, decode)):
      step.append(low)
  flat = [low for step in lowered for low in step]
  extra = {}  # Steps' fields after the six chunk steps, lowered
  if state.tokens is not None:
    extra["mask"] = _mask_report.lower(state.tokens.stats)
  if context is not None:
    # Lowered for a later chunk's state (a switch happens between chunks); its output has that state's types, so
    # the next chunk's step takes it as it comes.
    extra["switch"] = prompt_switch.switch_step.lower(m.dit_config, m.dit_params, state, abstract(context, on_dit),
                                                      history)
  if history is not None:
    extra["push"] = push_history.lower(history, edited, abstract(latents, on_dit))
  flat += extra.values()
  with concurrent.futures.ThreadPoolExecutor(len(flat)) as pool:
    compiled = list(pool.map(lambda low: low.compile(), flat))
  encode, dit, decode = (tuple(compiled[2 * i:2 * i + 2]) for i in range(3))
  return Steps(placement, encode, dit, decode, **{"mask": None, **dict(zip(extra, compiled[6:]))}), len(compiled)


class _Laps:
  """Stage times: with `sync`, `lap(out)` waits for `out` and records the ms since the previous lap; else nothing
  waits and `ms` is None."""

  def __init__(self, sync: bool):
    self.sync, self.start, self.times = sync, time.perf_counter(), []

  def lap(self, out: Any) -> None:
    if self.sync:
      jax.block_until_ready(out)
      self.times.append(_elapsed_ms(self.start))
      self.start = time.perf_counter()

  @property
  def ms(self) -> tuple[float, ...] | None:
    return tuple(self.times) if self.sync else None


def edit_chunk(models: Models, steps: Steps, ae_state: AutoencoderState, state: StreamState, frames: np.ndarray,
               later: bool, sync: bool, history: History | None = None):
  """One chunk through encode (on steps.placement.autoencoder) → DiT (on steps.placement.dit), dispatched without
  waiting unless `sync` (then each stage is waited for, so that it can be timed); `decode_edited` decodes it.

  frames: uint8 [T_read, H, W, 3] (with Wan's encoder 9 for the first chunk, 12 after; TAEHV's: 12 each).
  history: pushed the chunk's edited and source latents (--recache; None: not kept). Returns (ae_state, state, edited
  latents [1, c, h, w, z] copied to the autoencoder's device, [active fraction, IoU] of the mask chosen for the next
  chunk (a float32 [2] on the DiT's device; None without the mask cache), (encode, DiT) ms when `sync`, each with
  its output's copy to the next stage's device, else None, history).
  """
  m, laps, placement = models, _Laps(sync), steps.placement
  ae_state, latents = steps.encode[later](m.encoder.params, ae_state,
                                          jax.device_put(to_float(frames)[None], placement.autoencoder))
  latents = jax.device_put(latents, placement.dit)  # device to device, or nothing on one device
  laps.lap(latents)
  # A later chunk whose state has first_chunk set (the mask cache's next chunk after a prompt switch) runs in
  # full: the first chunk's step, lowered for such a state.
  edited, state = steps.dit[later and not state.first_chunk](m.dit_params, state, latents)
  to_decode = jax.device_put(edited, placement.autoencoder)
  laps.lap(to_decode)
  mask = None if steps.mask is None else steps.mask(state.tokens.stats)
  if history is not None:  # after the laps: not part of any stage's ms
    history = steps.push(history, edited, latents)
  return ae_state, state, to_decode, mask, laps.ms, history


def decode_edited(models: Models, steps: Steps, ae_state: AutoencoderState, edited: jax.Array, later: bool,
                  sync: bool) -> tuple[AutoencoderState, jax.Array, tuple[float, ...] | None]:
  """`edit_chunk`'s edited latents decoded on steps.placement.autoencoder, dispatched without waiting unless
  `sync`. Returns (ae_state, frames float32 [1, T_written, H, W, 3] in [−1, 1] on the device (9 for the first
  chunk, 12 after), (decode ms,) when `sync`, else None)."""
  laps = _Laps(sync)
  ae_state, decoded = steps.decode[later](models.decoder.params, ae_state, edited)
  laps.lap(decoded)
  return ae_state, decoded, laps.ms


@dataclasses.dataclass
class _Chunk:
  """A chunk on its way through the stream: the frames its encoder takes, uint8 [T_read, H, W, 3] (padded at the
  input's end), the source frames of its output uint8 [real, H, W, 3] (`autoencoders.stream_chunks`), when they
  reached the stream (perf_counter s), the input frame index its output starts at (0, 9, 21, … whichever the
  encoder), then its device outputs (`edit_chunk`'s edited latents, mask and ms, `decode_edited`'s decoded frames
  and ms added to them) and whether the chunk before it ran in full (the IoU of its mask is then not shown)."""

  index: int
  frames: np.ndarray
  source: np.ndarray
  read_at: float
  start: int
  after_full: bool = False
  edited: Any = None
  decoded: Any = None
  mask: Any = None
  ms: tuple[float, ...] | None = None


class _Worker(threading.Thread):
  """A daemon thread running `target`, its exception kept and raised again by `check` in the stream's thread."""

  def __init__(self, name: str, target: Callable[[], None]):
    super().__init__(name=name, daemon=True)
    self._work, self.error = target, None

  def run(self) -> None:
    try:
      self._work()
    except BaseException as err:  # noqa: BLE001 (re-raised in the stream's thread)
      self.error = err

  def check(self) -> None:
    if self.error is not None:
      raise self.error


_END = None  # the last item of a queue
_POLL_S = 0.1  # queue waits wake this often to see a failed worker (and let a signal through)


def _put(q: queue.Queue, item: Any, worker: _Worker | None = None, stop: threading.Event | None = None) -> bool:
  """Puts `item`, waiting for room; False if `stop` is set first; raises the error of `worker` (the consumer) if
  it failed."""
  while not (stop and stop.is_set()):
    if worker:
      worker.check()
    try:
      q.put(item, timeout=_POLL_S)
      return True
    except queue.Full:
      pass
  return False


def _get(q: queue.Queue, worker: _Worker) -> Any:
  """The next item, waiting for it; raises `worker`'s error if it failed."""
  while True:
    try:
      return q.get(timeout=_POLL_S)
    except queue.Empty:
      worker.check()


@contextlib.contextmanager
def _overlapped(chunks: Iterator[_Chunk], finish: Callable[[_Chunk], None], depth: int = 2):
  """Reads `chunks` in a thread and `finish`es (writes) chunks in another, each through a queue of `depth`, so
  both overlap the device work the stream's thread dispatches. Yields (the chunks read, the function handing a
  dispatched chunk to the writer, ready(wait): whether the next chunk, or the input's end, has been read, waited
  for if `wait`). On exit, also by an exception (Ctrl-C, SIGTERM, a failed chunk), the writer finishes every chunk
  already handed to it (at most depth + 1), so the output ends at a chunk boundary."""
  read, written, stop = queue.Queue(depth), queue.Queue(depth), threading.Event()
  peeked = []  # the next item, taken from `read` by `ready`

  def read_all():
    for chunk in chunks:
      if not _put(read, chunk, stop=stop):
        return
    _put(read, _END, stop=stop)

  def write_all():
    while (chunk := written.get()) is not _END:
      finish(chunk)

  writer = _Worker("stream writer", write_all)
  reader = _Worker("stream reader", read_all)
  writer.start()
  reader.start()

  def received():
    while (chunk := peeked.pop() if peeked else _get(read, reader)) is not _END:
      yield chunk

  def ready(wait: bool) -> bool:
    if not peeked and (wait or not read.empty()):  # this thread alone takes from `read`: the get does not wait
      peeked.append(_get(read, reader))
    return bool(peeked)

  try:
    yield received(), lambda chunk: _put(written, chunk, writer), ready
  finally:
    stop.set()
    _finish_writing(written, writer)
  writer.check()


def _finish_writing(written: queue.Queue, writer: _Worker) -> None:
  """Hands the writer the end of its queue and waits until it has written what it holds. An exception raised
  meanwhile (a second SIGTERM or Ctrl-C) is raised again only after that, so that no chunk is left half written
  while the output closes."""
  ended, interrupted = False, None
  while writer.is_alive():
    try:
      if not ended:
        written.put(_END, timeout=_POLL_S)
        ended = True
      else:
        writer.join(_POLL_S)
    except queue.Full:
      pass
    except BaseException as err:  # noqa: BLE001 (raised again below)
      interrupted = err
  if interrupted is not None:
    raise interrupted


@contextlib.contextmanager
def _serial(chunks: Iterator[_Chunk], finish: Callable[[_Chunk], None]):
  """`_overlapped`'s interface with no threads: each chunk is read, then edited, then written (the next chunk is
  never read ahead)."""
  yield chunks, finish, lambda wait: False


def _chunk_source(reader: FrameReader, frames: np.ndarray, limit: float, chunking: Chunking,
                  stream_start: float) -> Iterator[_Chunk]:
  """The stream's chunks, the first from `frames` (read before the models loaded), then from `reader` up to `limit`
  input frames."""
  unread = [frames]

  def read(n: int) -> np.ndarray:
    return unread.pop() if unread else reader.read(int(min(n, limit - reader.frames_read)))

  start = 0
  for index, (frames_, source) in enumerate(autoencoders.stream_chunks(read, chunking)):
    yield _Chunk(index, frames_, source, time.perf_counter() if index else stream_start, start)
    start += len(source)


class _Output:
  """The stream's output: each decoded chunk's real frames to the writer (source | edit with `side_by_side`), and
  to stderr a line per chunk (rate, latency, stage times, time left, the mask's share), a bar on a terminal, and
  the summary."""

  def __init__(self, writer: RawWriter | VideoWriter, side_by_side: bool, total: int | None, masked: bool,
               chunking: Chunking, started: float | None):
    """started: perf_counter at the run's start, for the time to the first edited frame (default: now, the
    stream's start)."""
    self.writer, self.side_by_side, self.total, self.masked = writer, side_by_side, total, masked
    self.chunking, self.stream_start = chunking, time.perf_counter()
    self.started = self.stream_start if started is None else started
    self.bar = cli.progress(total=total, desc="stream", unit="frame")
    self.clock = {"last": self.stream_start}  # when the last chunk was written, the first, and the ETA's base

  def finish(self, chunk: _Chunk) -> None:
    """Writes and reports `chunk` (waiting for its device work)."""
    first_frame, real = self.writer.frames_written, len(chunk.source)
    edited = to_uint8(np.asarray(chunk.decoded)[0, :real])
    self.writer.write(np.concatenate([chunk.source, edited], axis=2) if self.side_by_side else edited)
    clock, written = self.clock, self.writer.frames_written
    now = time.perf_counter()
    if chunk.index == 0:
      clock["first"] = now
    wall, clock["last"] = now - clock["last"], now
    self.bar.update(real)
    report = (f"chunk {chunk.index}: frames {first_frame}-{written - 1}  {real / wall:.1f} fps"
              f"  wall {wall * 1e3:.1f} ms  latency {(now - chunk.read_at) * 1e3:.1f} ms")
    if chunk.ms is not None:
      report += "".join(f"  {name} {t:.1f} ms" for name, t in zip(("encode", "dit", "decode"), chunk.ms))
    if self.total is not None and chunk.index > 1:  # the rate of the chunks after the first two
      rate = (written - clock["eta_frames"]) / (now - clock["eta_start"])
      report += f"  {cli.format_seconds(max(0, self.total - written) / rate)} left"
    if chunk.index == 1:
      clock["eta_start"], clock["eta_frames"] = now, written
    if self.masked and chunk.mask is None:
      report += "  mask: all tokens"
    elif self.masked:
      fraction, iou = np.asarray(chunk.mask)
      report += f"  mask: {fraction:.0%} tokens recomputed" + ("" if chunk.after_full else f", IoU {iou:.2f}")
    cli.say(report)

  def close(self) -> None:
    self.bar.close()
    clock, written = self.clock, self.writer.frames_written
    later = written - min(written, self.chunking.written[0])
    rate = f", {later / (clock['last'] - clock['first']):.1f} fps after chunk 0" if later else ""
    first = "" if "first" not in clock else \
        f", the first edited frame {clock['first'] - self.started:.1f} s after the start"
    cli.say(f"wrote {written} frames to {self.writer.name} in {time.perf_counter() - self.stream_start:.1f} s"
            f"{rate}{first}")


def _switch_if_due(pending: list[tuple[ScheduledPrompt, jax.Array]], chunk: _Chunk, models: Models, steps: Steps,
                   state: StreamState, history: History | None) -> StreamState | None:
  """The state switched (`steps.switch_prompt`) to the prompt of the last of the `pending` entries due at `chunk`,
  those whose frame is at or before the chunk's first, or None if none is due. The due entries leave `pending`;
  the KV cache is re-cached from `history` when given, else kept."""
  due = [item for item in pending if item[0].frame <= chunk.start]
  if not due:
    return None
  del pending[:len(due)]
  entry, context = due[-1]  # the others due here would be replaced before any frame is edited under them
  state = steps.switch_prompt(models.dit_params, state, context, history)
  cli.say(f"prompt switch before chunk {chunk.index} (input frame {chunk.start}; {entry.where}): "
          f"{entry.prompt!r}, the KV cache " + ("re-cached under it" if history is not None else "kept"))
  return state


def run_stream(models: Models, steps: Steps, state: StreamState, ae_state: AutoencoderState, reader: FrameReader,
               writer: RawWriter | VideoWriter, frames: np.ndarray, chunking: Chunking, limit: float,
               total: int | None = None, side_by_side: bool = False, sync_stages: bool = False,
               started: float | None = None, schedule: Sequence[tuple[ScheduledPrompt, jax.Array]] = (),
               history: History | None = None) -> None:
  """Edits chunks until the input ends (or `limit` input frames), writing each chunk's real frames as it is done:
  output frame j is the edit of input frame j, with a TAEHV encoder written `chunking.lag` frames after it is read
  (and its last frames by a chunk of padding after the input's end).

  frames: the first chunk, already read. total: the input's frame count when known (for the time left).
  side_by_side: write source | edit frames [T, H, 2W, 3]. sync_stages: wait for each stage (timed) and read, edit
  and write one chunk after the other, instead of overlapping them. started: perf_counter at the run's start
  (default: now), for the time to the first edited frame. schedule: (entry, its embedding on the device), sorted
  by frame, switched to as `_switch_if_due` says; history: given (--recache), every chunk is pushed to it and a
  switch re-caches the KV cache from it. Progress and a summary go to stderr (`_Output`).
  """
  output = _Output(writer, side_by_side, total, steps.mask is not None, chunking, started)

  def decode(chunk: _Chunk):
    nonlocal ae_state
    ae_state, chunk.decoded, ms = decode_edited(models, steps, ae_state, chunk.edited, later=chunk.index > 0,
                                                sync=sync_stages)
    chunk.edited, chunk.ms = None, chunk.ms and chunk.ms + ms
    send(chunk)

  def decode_held():
    while held:  # popped first: an interrupt inside the decode does not write the chunk twice
      decode(held.pop())

  mask = None  # the mask statistics of the chunk being edited (chosen by the previous chunk's step)
  pending = list(schedule)  # the entries not yet in effect, by frame
  full = False  # whether the previous chunk ran in full (the first always does)
  held: list[_Chunk] = []  # a chunk denoised, its decode not yet dispatched
  try:
    chunks = _chunk_source(reader, frames, limit, chunking, output.stream_start)
    with (_serial if sync_stages else _overlapped)(chunks, output.finish) as (received, send, ready):
      try:
        for chunk in received:
          output.bar.set_description(f"chunk {chunk.index}")
          if (switched := _switch_if_due(pending, chunk, models, steps, state, history)) is not None:
            state, mask = switched, None if switched.first_chunk else mask  # a first chunk recomputes every token
          chunk.after_full, full = full, chunk.index == 0 or state.first_chunk
          ae_state, state, chunk.edited, next_mask, chunk.ms, history = edit_chunk(
              models, steps, ae_state, state, chunk.frames, later=chunk.index > 0, sync=sync_stages, history=history)
          chunk.mask, mask = mask, next_mask
          decode_held()
          # A device runs its programs in dispatch order: with the stages on two devices, a decode dispatched now
          # would make the DiT wait for it and the next encode, so it waits until that encode is dispatched (for a
          # file; a live input only if its next chunk is already read, so that no decode waits for the camera).
          if steps.placement.pipelined and ready(wait=total is not None):
            held.append(chunk)
          else:
            decode(chunk)
      except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: the chunk already denoised is written too
        decode_held()
        raise
      decode_held()
  finally:
    output.close()


def load_models(args: argparse.Namespace, dtype: str, encoder: autoencoders.Config,
                decoder: autoencoders.Config) -> Models:
  """The DiT (with --kernels) and the autoencoders in `dtype`, each between two status lines and loaded onto its
  device (args.placement); `encoder`, `decoder`: their configs (`check_decoder`), for their names. One directory
  that encodes and decodes loads once; with --decoder each directory keeps only the params of its side."""
  dirs, devices = args.models, args.placement
  dit = load_logged(_model_name(args, "dit", "DiT"), dirs.dit,
                    lambda: born_on(devices.dit, lambda: load_dit(dirs.dit, compute_dtype=dtype)), lambda m: m[1])
  split = args.decoder is not None
  sides = [(dirs.vae, _model_name(args, "vae", autoencoders.kind_of(encoder).noun) + (" encoder" if split else ""),
            "encoder" if split else "both")]
  if split:
    sides.append((args.decoder, f"the {autoencoders.kind_of(decoder).noun} decoder", "decoder"))

  def load(path: str, side: str) -> Autoencoder:  # through a dict: born_on maps a pytree, which Autoencoder is not
    return Autoencoder(**born_on(devices.autoencoder, lambda: vars(autoencoders.load(path, dtype, side))))

  loaded = [load_logged(name, path, lambda path=path, side=side: load(path, side), lambda m: m.params)
            for path, name, side in sides]
  return Models(dit[0].replace(kernels=args.kernels), dit[1], loaded[0], loaded[-1])


def _announce(args: argparse.Namespace, source: str, output: str, total: int | None, chunking: Chunking,
              dtype: str) -> None:
  """The stream's first status line: what it reads and writes, at which size, rate, dtype, chunks and devices."""
  exact = is_raw(args.input) or is_synthetic(args.input)
  length = "" if total is None else f" ({'' if exact else 'about '}{total} frames)"
  read, written = chunking
  chunks = f"chunks of {written[0]} then {written[1]} frames" if read == written else (
      f"chunks of {read[0]} then {read[1]} frames read, {written[0]} then {written[1]} written (the output "
      f"{chunking.lag} frames behind the input)")
  devices = args.placement
  on = "" if not devices.pipelined else f", the autoencoders on {devices.autoencoder} and the DiT on {devices.dit}"
  cli.say(f"streaming {source}{length} to {output} at {args.width}×{args.height}, {args.fps:g} fps, {dtype}, "
          f"{chunks}" + (", source | edit" if args.side_by_side else "") + on)


def main(argv: list[str] | None = None) -> None:
  started = time.perf_counter()
  args = parse_args(argv)
  if not args.no_compile_cache:
    enable_compile_cache(compile_cache_dir())
  cli.refuse_existing(args.output, args.overwrite)
  dit_config, encoder, _ = default_model.check_models(args.models, args.height, args.width)
  decoder = check_decoder(args, encoder)
  input_size = parse_size(args.input_size) if args.input_size else None
  options = stream_options(args)
  height, width = args.height, args.width
  chunking = autoencoders.chunking(encoder, decoder, options.chunk_frames)
  limit = args.max_frames or float("inf")
  dtype = args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")

  with contextlib.ExitStack() as stack:
    stack.enter_context(_sigterm_unwinds())
    reader = stack.enter_context(open_reader(args.input, width, height, args.fps, input_size))
    writer = stack.enter_context(open_writer(args.output, 2 * width if args.side_by_side else width, height,
                                             args.fps, overwrite=args.overwrite))
    # The first chunk is read before the models load, so an unreadable input fails in seconds.
    frames = reader.read(int(min(chunking.read[0], limit)))
    if not len(frames):
      raise VideoIOError(f"{reader.name}: no frames to read")
    if not args.context and not args.prompt:  # parse_args allows this for a synthetic input only
      args.prompt = reader.example.instruction
      cli.say(f"prompt: {args.prompt!r}, the instruction of {reader.name} (--prompt replaces it)")
    total = count_frames(args.input, width, height, args.fps, input_size)
    if total is not None and args.max_frames:
      total = min(total, args.max_frames)
    context, *scheduled = load_contexts(args, dit_config)
    models = load_models(args, dtype, encoder, decoder)
    s, devices = encoder.spatial_factor, args.placement
    state = born_on(devices.dit, lambda: init_stream(
        models.dit_config, models.dit_params, context, latent_height=height // s, latent_width=width // s,
        options=options, rng=jax.random.key(args.seed)))
    ae_state = born_on(devices.autoencoder, lambda: autoencoders.init_state(
        models.encoder.config, models.decoder.config, 1, height, width))
    # Made (and the scheduled embeddings copied to the device) before streaming: nothing runs uncompiled there.
    history = born_on(devices.dit, lambda: prompt_switch.empty_history(state, models.dit_config)) \
        if args.recache else None
    schedule = [(entry, jax.device_put(embedding, devices.dit)) for entry, embedding in zip(args.schedule, scheduled)]
    _announce(args, reader.name, writer.name, total, chunking, dtype)
    cache = "" if args.no_compile_cache else f" (compilation cache: {_shown_cache_dir()})"
    switch = "" if not schedule else " and the prompt switch" + (" (re-caching)" if args.recache else "")
    nouns = autoencoders.kind_of(encoder).noun, autoencoders.kind_of(decoder).noun
    with cli.status(f"compiling the {nouns[0]} encode, DiT step and {nouns[1]} decode of the first and the later "
                    f"chunks{switch}{cache}") as compiling:
      with cli.CompileTimer() as timer:
        steps, count = compile_steps(models, devices, state, ae_state, chunking, height, width,
                                     schedule[0][1] if schedule else None, history)
      compiling.note(f"{timer.count - timer.cache_hits} of {count} executables compiled" +
             ("" if args.no_compile_cache else f", {timer.cache_hits} read from the cache"))
    run_stream(models, steps, state, ae_state, reader, writer, frames, chunking, limit, total,
               args.side_by_side, args.sync_stages, started, schedule, history)


if __name__ == "__main__":
  cli.run(main)
