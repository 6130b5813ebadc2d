"""`python -m liveedit_jax.stream` and `video_io`: the CLI adds no numerical change to the Python pipeline (its
overlapped loop writes exactly what the serial `--sync-stages` loop writes), writes every real frame of a partial
last chunk, stops at a chunk boundary with a prefix of the full output (also on SIGTERM or Ctrl-C in the middle
of the overlapped loop), finalises an mp4 on SIGTERM, compiles nothing in a second process with a warm
compilation cache, and fails with errors that name the file and the problem.

Tiny random DiT and VAE checkpoints (the DiT's zero-initialised head given random weights, so the output depends
on the whole network) are saved with `param_io.save_params` as the converters save them. The input is 25 frames
of 32×48: chunks of 9, 12 and 4 (padded to 12) video frames, i.e. latents of 4×6 and 2×3 DiT tokens per frame.
The runs in this process pass --no-compile-cache (the user's cache directory is not written); the cache is tested
in subprocesses with their own XDG_CACHE_HOME.
"""

import argparse
import dataclasses
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import imageio_ffmpeg
import jax
import ml_dtypes
import numpy as np
import pytest

from liveedit_jax import autoencoders, default_model, param_io, stream, video_io
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import init_dit_params, load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.prompt_cache import PromptCache
from liveedit_jax.stream_step import StreamConfig, init_stream, stream_step
from liveedit_jax.umt5 import UMT5Config, text_encoder_identity
from liveedit_jax.vae import VAEConfig, init_vae_params, load_vae
from tests.random_params import filled_like

DIT = DiTConfig.preset("tiny")
VAE = VAEConfig.preset("tiny", num_res_blocks=1)  # one block per stage: compiles faster, same code paths
H, W = 32, 48
FRAMES = 25
CHUNKS = (slice(0, 9), slice(9, 21), slice(21, 25))  # the last one is padded with frame 24 to 12 frames


def random_vae_params(config: VAEConfig, rng: np.random.Generator):
  """Random weights in the shapes of `init_vae_params`, without running its Flax init."""
  return filled_like(jax.eval_shape(functools.partial(init_vae_params, config), jax.random.key(0)), rng)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Checkpoint dirs, a context .npy and a raw input; returns the paths and the input frames."""
  root = tmp_path_factory.mktemp("stream_cli")
  rng = np.random.default_rng(0)
  dit_params = init_dit_params(DIT, jax.random.key(0))
  dit_params["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1),
                                                                 dit_params["head"]["proj"]["kernel"].shape)
  param_io.save_params(root / "dit", "dit", dataclasses.asdict(DIT), dit_params)
  param_io.save_params(root / "vae", "vae", VAE.to_dict(), random_vae_params(VAE, rng))
  np.save(root / "context.npy", rng.standard_normal((1, 5, DIT.text_dim)).astype(np.float32))
  # Smooth moving gradients plus noise: content that an H.264 round trip keeps close.
  t, y, x = np.meshgrid(np.arange(FRAMES), np.arange(H), np.arange(W), indexing="ij")
  base = np.stack([x * 5 + t * 3, y * 7 + t * 2, (x + y) * 3 + t * 5], -1) % 256
  frames = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
  frames.tofile(root / "input.rgb")
  return {"root": root, "frames": frames, "dit": str(root / "dit"), "vae": str(root / "vae"),
          "context": str(root / "context.npy"), "input": str(root / "input.rgb")}


def cli_args(setup, output, *extra, input=None):
  input = input or setup["input"]
  return ["--input", input, *(["--input-size", f"{W}x{H}"] if video_io.is_raw(input) else []),
          "--output", str(output), "--dit", setup["dit"], "--vae", setup["vae"], "--context", setup["context"],
          "--height", str(H), "--width", str(W), "--seed", "3", "--no-compile-cache", *extra]


def read_raw(path) -> np.ndarray:
  return np.fromfile(path, np.uint8).reshape(-1, H, W, 3)


@pytest.fixture(scope="module")
def full_run(setup):
  """The whole input through the CLI to a raw .rgb file (mask cache on, the default)."""
  output = setup["root"] / "full.rgb"
  stream.main(cli_args(setup, output))
  return read_raw(output)


def test_cli_equals_python_pipeline(setup, full_run):
  """Raw output = the same chunks through vae_encode_step → stream_step → vae_decode_step (the CLI's jits of
  `autoencoders.encode_step` / `decode_step`), exactly (uint8)."""
  dit_config, dit_params = load_dit(setup["dit"], compute_dtype="float32")
  vae_config, vae_params = load_vae(setup["vae"], compute_dtype="float32")
  options = StreamConfig(mask_cache=MaskCacheConfig(prune_ratio=0.7, cache_on="self_attn"))
  state = init_stream(dit_config, dit_params, np.load(setup["context"]), latent_height=H // 8, latent_width=W // 8,
                      options=options, rng=jax.random.key(3))
  vae_state = autoencoders.init_state(vae_config, vae_config, 1, H, W)
  expected = []
  for i, chunk in enumerate(CHUNKS):
    frames = setup["frames"][chunk]
    frames = np.concatenate([frames, np.repeat(frames[-1:], 12 - len(frames), 0)]) if i == 2 else frames
    video = frames[None].astype(np.float32) / 127.5 - 1
    vae_state, latents = stream.encode_chunk(vae_config, vae_params, vae_state, video, first=i == 0)
    edited, state = stream_step(dit_config, dit_params, state, latents)
    vae_state, decoded = stream.decode_chunk(vae_config, vae_params, vae_state, edited, first=i == 0)
    real = chunk.stop - chunk.start
    expected.append(np.clip(np.rint((np.asarray(decoded[0, :real]) + 1) * 127.5), 0, 255).astype(np.uint8))
  expected = np.concatenate(expected)
  assert full_run.shape == (FRAMES, H, W, 3)  # the partial last chunk's 4 real frames, not its padding
  np.testing.assert_array_equal(full_run, expected)
  assert full_run.std() > 5  # the edit is an image, not a constant the comparison could not tell apart


def test_max_frames_gives_prefix(setup, full_run, capsys):
  """Stopped after two chunks (21 frames), the output is the full run's first 21 frames; a progress line each."""
  output = setup["root"] / "prefix.rgb"
  stream.main(cli_args(setup, output, "--max-frames", "21"))
  np.testing.assert_array_equal(read_raw(output), full_run[:21])
  lines = capsys.readouterr().err.splitlines()
  chunks = [line for line in lines if re.match(r"chunk \d+: frames", line)]
  assert [line.split(":")[0] for line in chunks] == ["chunk 0", "chunk 1"]
  assert "mask: all tokens" in chunks[0] and "mask: 33% tokens recomputed" in chunks[1]
  assert lines[-1].startswith("wrote 21 frames to")


def test_progress_lines(setup, tmp_path, capsys):
  """Loading names each model with its size and parameter count; the input's length is given; every step is
  compiled before the first chunk; each chunk gives its rate, wall time and latency, the chunks after the first
  two the time left until the last one; the summary gives the time to the first edited frame."""
  source = tmp_path / "long.rgb"
  np.concatenate([setup["frames"], setup["frames"]]).tofile(source)  # 50 frames: chunks of 9, 12, 12, 12, 5
  stream.main(cli_args(setup, tmp_path / "out.rgb", input=str(source)))
  lines = capsys.readouterr().err.splitlines()
  dit_params = sum(np.size(a) for a in jax.tree.leaves(load_dit(setup["dit"])[1]))
  dit_bytes = sum(p.stat().st_size for p in setup["root"].joinpath("dit").rglob("*") if p.is_file())
  assert lines[0] == f"loading the DiT from {setup['dit']} ({dit_bytes / 1e3:.1f} KB) ..."
  assert lines[1].startswith(f"loading the DiT from {setup['dit']} ({dit_bytes / 1e3:.1f} KB): done in ")
  assert lines[1].endswith(f" s, {dit_params / 1e3:.3g} k parameters")
  assert lines[2].startswith("loading the VAE from") and "done in" in lines[3]
  assert lines[4].startswith(f"streaming {source} (50 frames) to {tmp_path / 'out.rgb'} at 48×32, 16 fps, float32")
  assert lines[5] == "compiling the VAE encode, DiT step and VAE decode of the first and the later chunks ..."
  # 7: encode, DiT step and decode for each of the two chunk shapes, and the mask statistics' copy; compiled by
  # the first run in this process, held in memory for the later ones.
  assert re.fullmatch(r"compiling .* chunks: done in [\d.]+ s, [07] of 7 executables compiled", lines[6])
  chunks = {int(m[1]): line for line in lines if (m := re.match(r"chunk (\d+): frames", line))}
  assert sorted(chunks) == [0, 1, 2, 3, 4]
  sizes = [9, 12, 12, 12, 5]
  for i, line in chunks.items():
    m = re.match(r"chunk \d+: frames (\d+)-(\d+)  ([\d.]+) fps  wall ([\d.]+) ms  latency ([\d.]+) ms", line)
    assert (int(m[1]), int(m[2])) == (sum(sizes[:i]), sum(sizes[:i + 1]) - 1)
    assert float(m[3]) == pytest.approx(sizes[i] / float(m[4]) * 1e3, rel=0.01, abs=0.1)
    assert float(m[5]) >= float(m[4]) if i == 0 else float(m[5]) > 0
    assert " encode " not in line  # the stages overlap, so they are not timed
  left = [re.search(r"  ([\d.]+) s left", chunks[i]) for i in range(5)]
  assert [m is not None for m in left] == [False, False, True, True, True]
  assert float(left[2][1]) > 0 and float(left[4][1]) == 0
  assert re.fullmatch(rf"wrote 50 frames to {re.escape(str(tmp_path / 'out.rgb'))} in [\d.]+ s, [\d.]+ fps after "
                      r"chunk 0, the first edited frame [\d.]+ s after the start", lines[-1])
  assert video_io.count_frames(str(source), W, H, 16, (W, H)) == 50


def test_existing_output_is_refused_unless_overwrite(setup, full_run, tmp_path):
  output = tmp_path / "out.rgb"
  output.write_bytes(b"precious")
  with pytest.raises(FileExistsError, match=r"--output .*out.rgb exists; pass --overwrite to replace it"):
    stream.main(cli_args(setup, output))
  assert output.read_bytes() == b"precious"
  stream.main(cli_args(setup, output, "--overwrite"))
  np.testing.assert_array_equal(read_raw(output), full_run)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rgb"]


@pytest.mark.parametrize("suffix,sync", [(".rgb", True), (".mp4", True), (".rgb", False), (".mp4", False)])
def test_output_takes_its_name_when_the_first_chunk_is_written(setup, tmp_path, monkeypatch, suffix, sync):
  """The first chunk goes to a hidden partial file beside the output; the output appears (replacing the old one,
  with --overwrite) once that chunk is written. A failure inside the first chunk leaves the old file as it was
  and no partial file; a failure in the second leaves the first chunk's frames under the output's name (in the
  overlapped loop too, whose writer may not have written the first chunk yet when the second fails)."""
  output = tmp_path / f"out{suffix}"
  output.write_bytes(b"old")
  seen = []
  edit_chunk = stream.edit_chunk

  def failing_edit_chunk(*args, **kwargs):
    seen.append((output.read_bytes() == b"old", [p.name for p in tmp_path.iterdir() if "partial" in p.name]))
    if len(seen) == fail_at:
      raise RuntimeError("the device fell off")
    return edit_chunk(*args, **kwargs)

  monkeypatch.setattr(stream, "edit_chunk", failing_edit_chunk)
  extra = ["--overwrite"] + (["--sync-stages"] if sync else [])
  fail_at = 1
  with pytest.raises(RuntimeError, match="fell off"):
    stream.main(cli_args(setup, output, *extra))
  assert output.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [output.name]
  seen.clear()
  fail_at = 2
  with pytest.raises(RuntimeError, match="fell off"):
    stream.main(cli_args(setup, output, *extra))
  assert seen[0] == (True, [])  # the partial file is created by the first write
  if sync:
    assert seen[1][0] is False and seen[1][1] == []  # after the first chunk: published under its own name
  assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]
  if suffix == ".rgb":
    assert read_raw(output).shape == (9, H, W, 3)
  else:
    with video_io.open_reader(str(output), W, H, 16) as reader:
      assert reader.read(100).shape == (9, H, W, 3)


def test_writer_writes_under_a_partial_name_first(tmp_path):
  """Before its first write a writer has made no file; the bytes of the first write land in the partial file,
  which then takes the output's name; closing a writer that wrote nothing leaves nothing."""
  frames = np.random.default_rng().integers(0, 256, (3, H, W, 3), dtype=np.uint8)
  for suffix in (".rgb", ".mp4"):
    output = tmp_path / f"a{suffix}"
    with video_io.open_writer(str(output), W, H, 16) as writer:
      assert list(tmp_path.iterdir()) == []
      writer.write(frames)
      assert output.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with video_io.open_reader(str(output), W, H, 16, (W, H) if suffix == ".rgb" else None) as reader:
      got = reader.read(10)
    assert got.shape == frames.shape
    if suffix == ".rgb":
      np.testing.assert_array_equal(got, frames)
    for path in tmp_path.iterdir():
      path.unlink()
  with video_io.open_writer(str(tmp_path / "b.mp4"), W, H, 16), video_io.open_writer(str(tmp_path / "b.rgb"), W, H, 16):
    pass
  assert list(tmp_path.iterdir()) == []
  (tmp_path / "c.mp4").write_bytes(b"x")
  with pytest.raises(FileExistsError, match=r"c.mp4 exists; pass --overwrite"):
    video_io.open_writer(str(tmp_path / "c.mp4"), W, H, 16)


def test_count_frames_matches_the_reader(tmp_path):
  """A video file's estimated length at another frame rate is within one frame of what the reader yields."""
  rng = np.random.default_rng()
  n, fps = int(rng.integers(10, 40)), float(rng.choice([12, 16, 24, 30]))
  source = tmp_path / "v.mp4"
  with video_io.open_writer(str(source), W, H, fps) as writer:
    writer.write(rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8))
  for target_fps in (16, 8, 25):
    with video_io.open_reader(str(source), W, H, target_fps) as reader:
      got = len(reader.read(1000))
    assert abs(video_io.count_frames(str(source), W, H, target_fps) - got) <= 1, (n, fps, target_fps)
  assert video_io.count_frames("-", W, H, 16, (W, H)) is None
  assert video_io.count_frames("webcam:/dev/video0", W, H, 16) is None


def test_stdin_stdout(setup, full_run, monkeypatch):
  """`--input -` / `--output -`: raw frames from stdin to stdout, the same as through files."""
  stdin = io.TextIOWrapper(io.BytesIO(setup["frames"].tobytes()))
  stdout = io.TextIOWrapper(io.BytesIO())
  monkeypatch.setattr(sys, "stdin", stdin)
  monkeypatch.setattr(sys, "stdout", stdout)
  stream.main(cli_args(setup, "-", input="-"))
  np.testing.assert_array_equal(np.frombuffer(stdout.buffer.getvalue(), np.uint8).reshape(-1, H, W, 3), full_run)


def test_mp4_output(setup, full_run):
  """An mp4 output holds every frame in order: each decoded frame is nearest to its own raw-output frame (H.264
  is lossy, and this noisy random-model output loses ~20 dB PSNR, so equality cannot be asked)."""
  output = setup["root"] / "out.mp4"
  stream.main(cli_args(setup, output))
  assert imageio_ffmpeg.count_frames_and_secs(str(output))[0] == FRAMES
  with video_io.open_reader(str(output), W, H, 16) as reader:
    frames = reader.read(100)
  assert frames.shape == (FRAMES, H, W, 3)
  mse = np.square(frames[:, None].astype(np.float32) - full_run[None]).mean(axis=(2, 3, 4))  # [decoded, raw]
  np.testing.assert_array_equal(mse.argmin(axis=1), np.arange(FRAMES))


def test_mp4_input(setup, tmp_path):
  """An mp4 input at twice the model's size is decoded, scaled and cropped: every frame comes out, at 32×48."""
  source = tmp_path / "input_2x.mp4"
  with video_io.open_writer(str(source), 2 * W, 2 * H, 16) as writer:
    writer.write(np.repeat(np.repeat(setup["frames"], 2, 1), 2, 2))
  output = tmp_path / "out.rgb"
  stream.main(cli_args(setup, output, input=str(source)))
  assert read_raw(output).shape == (FRAMES, H, W, 3)


def test_sigterm_finalises_mp4(setup, full_run, monkeypatch):
  """SIGTERM after the first chunk is written (serial loop): main exits with 143 and the mp4 holds that chunk's 9
  frames."""
  write = video_io.VideoWriter.write

  def write_then_terminate(self, frames):
    write(self, frames)
    os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(video_io.VideoWriter, "write", write_then_terminate)
  handler = signal.getsignal(signal.SIGTERM)
  output = setup["root"] / "terminated.mp4"
  with pytest.raises(SystemExit) as exit_info:
    stream.main(cli_args(setup, output, "--sync-stages"))
  assert exit_info.value.code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == handler  # restored
  with video_io.open_reader(str(output), W, H, 16) as reader:
    assert reader.read(100).shape == (9, H, W, 3)


def test_sync_stages_writes_the_same_frames(setup, full_run, capsys):
  """The serial loop (--sync-stages, each stage waited for and timed) writes exactly the overlapped loop's frames;
  its chunk lines add the ms of each stage, which fit inside the chunk's wall time."""
  output = setup["root"] / "serial.rgb"
  stream.main(cli_args(setup, output, "--sync-stages"))
  np.testing.assert_array_equal(read_raw(output), full_run)
  chunks = [line for line in capsys.readouterr().err.splitlines() if re.match(r"chunk \d+: frames", line)]
  assert len(chunks) == 3
  for line in chunks:
    m = re.search(r"wall ([\d.]+) ms  latency [\d.]+ ms  encode ([\d.]+) ms  dit ([\d.]+) ms  decode ([\d.]+) ms",
                  line)
    assert 0 < float(m[2]) + float(m[3]) + float(m[4]) <= float(m[1]) + 0.3  # each printed to 0.1 ms


def test_attention_option(setup, full_run, tmp_path, capsys):
  """--kernels xla, what auto picks on a CPU, writes the same frames; without a GPU the GPU-only
  implementations are refused in one line before anything loads."""
  stream.main(cli_args(setup, tmp_path / "xla.rgb", "--kernels", "xla"))
  np.testing.assert_array_equal(read_raw(tmp_path / "xla.rgb"), full_run)
  if jax.default_backend() == "gpu":
    return
  for impl in ("cudnn", "pallas"):
    with pytest.raises(SystemExit) as info:
      stream.main(cli_args(setup, tmp_path / f"{impl}.rgb", "--kernels", impl))
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --kernels {impl} runs on a GPU only; JAX runs on cpu here (use auto or xla) (see python -m "
        f"liveedit_jax.stream --help)")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_the_overlapped_loop_leaves_whole_chunks(setup, full_run, monkeypatch, signum):
  """A signal arriving while the overlapped loop runs (sent here from the writer thread after each chunk it
  writes: the first while the next chunks are read and dispatched, the later ones while the writer finishes the
  chunks handed to it): SIGTERM exits with 143, Ctrl-C raises KeyboardInterrupt, and either way the raw output
  holds a whole number of chunks, the full run's prefix."""
  write = video_io.RawWriter.write

  def write_then_signal(self, frames):
    write(self, frames)
    os.kill(os.getpid(), signum)

  monkeypatch.setattr(video_io.RawWriter, "write", write_then_signal)
  output = setup["root"] / f"signalled-{signum}.rgb"
  expected = SystemExit if signum == signal.SIGTERM else KeyboardInterrupt
  with pytest.raises(expected) as info:
    stream.main(cli_args(setup, output, "--overwrite"))
  if signum == signal.SIGTERM:
    assert info.value.code == 128 + signal.SIGTERM
  assert output.stat().st_size % (H * W * 3) == 0
  frames = read_raw(output)
  assert len(frames) in (9, 21, 25)  # chunk boundaries
  np.testing.assert_array_equal(frames, full_run[:len(frames)])


# Runs the CLI and prints, as JSON, what JAX's monitoring saw: compile requests, persistent-cache misses and hits.
_COUNTED_RUN = textwrap.dedent("""
    import json, sys
    import jax.monitoring
    counts = {"compiles": 0, "misses": 0, "hits": 0}
    names = {"/jax/compilation_cache/cache_misses": "misses", "/jax/compilation_cache/cache_hits": "hits"}
    jax.monitoring.register_event_listener(
        lambda event, **_: counts.__setitem__(names[event], counts[names[event]] + 1) if event in names else None)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: counts.__setitem__("compiles", counts["compiles"] + 1)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    from liveedit_jax import stream
    stream.main(sys.argv[1:])
    print(json.dumps(counts))
""")


def test_warm_compilation_cache_compiles_nothing(setup, full_run, tmp_path):
  """Two runs in fresh processes sharing a cache directory (XDG_CACHE_HOME): the first compiles and fills
  $XDG_CACHE_HOME/liveedit_jax/jax_cache; the second reads every program from it, compiling none (no cache
  miss), adds no entry, and writes the same frames as the first and as the in-process run."""
  env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "JAX_PLATFORMS": "cpu"}
  cache = tmp_path / "xdg" / "liveedit_jax" / "jax_cache"
  runs = []
  for i in range(2):
    args = [a for a in cli_args(setup, tmp_path / f"out{i}.rgb") if a != "--no-compile-cache"]
    result = subprocess.run([sys.executable, "-c", _COUNTED_RUN, *args], capture_output=True, text=True,
                            timeout=300, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    compiled = re.search(r"compiling .* chunks \(compilation cache: .*\): done in [\d.]+ s, (\d+) of 7 executables "
                         r"compiled, (\d+) read from the cache", result.stderr)
    runs.append((json.loads(result.stdout.splitlines()[-1]), compiled.groups(), sorted(cache.iterdir())))
    np.testing.assert_array_equal(read_raw(tmp_path / f"out{i}.rgb"), full_run)
  (cold, cold_line, cold_entries), (warm, warm_line, warm_entries) = runs
  assert cold["misses"] > 0 and cold_line == ("7", "0") and cold_entries
  assert warm["misses"] == 0 and warm["hits"] == warm["compiles"] > 0 and warm_line == ("0", "7")
  assert warm_entries == cold_entries


def test_killed_writer_leaves_playable_mp4(tmp_path):
  """A process killed (SIGKILL, no cleanup) while writing: ffmpeg, in its own session, sees its input end and
  finalises the file with every frame written."""
  output = tmp_path / "killed.mp4"
  script = textwrap.dedent(f"""
      import os, signal, numpy as np
      from liveedit_jax.video_io import open_writer
      writer = open_writer({str(output)!r}, {W}, {H}, 16)
      for i in range(3):
        writer.write(np.full((7, {H}, {W}, 3), 40 * i, np.uint8))
      print(writer._process.pid, flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == -signal.SIGKILL, result.stderr
  ffmpeg_pid = int(result.stdout)
  deadline = time.monotonic() + 30
  while os.path.exists(f"/proc/{ffmpeg_pid}") and time.monotonic() < deadline:
    time.sleep(0.05)
  with video_io.open_reader(str(output), W, H, 16) as reader:
    frames = reader.read(100)
  assert frames.shape == (21, H, W, 3)
  np.testing.assert_allclose(frames[::7].mean(axis=(1, 2, 3)), [0, 40, 80], atol=3)


def test_raw_reader_is_exact_and_resizes(setup):
  """Raw input at the model's size is read byte for byte; at another size ffmpeg scales to cover, then crops."""
  with video_io.open_reader(setup["input"], W, H, 16, (W, H)) as reader:
    chunks = [reader.read(9), reader.read(12), reader.read(12), reader.read(12)]
  assert [len(c) for c in chunks] == [9, 12, 4, 0]
  np.testing.assert_array_equal(np.concatenate(chunks), setup["frames"])
  # 48×32 → 32×32: the scale already covers it, so the result is the center crop.
  with video_io.open_reader(setup["input"], 32, 32, 16, (W, H)) as reader:
    np.testing.assert_array_equal(reader.read(FRAMES), setup["frames"][:, :, 8:40])


def test_float_conversion_round_trips():
  frames = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  x = video_io.to_float(frames)
  assert x.min() == -1 and x.max() == 1
  np.testing.assert_array_equal(video_io.to_uint8(x), frames)
  np.testing.assert_array_equal(video_io.to_uint8(np.array([-2.0, 2.0])), [0, 255])


def test_prompt_cache_hit_loads_no_encoder(tmp_path):
  """With --prompt-cache, a cached prompt's bfloat16 embedding is used as stored and the encoder is never loaded
  (its directory here holds a config and no weights, so a load would fail)."""
  encoder_dir = tmp_path / "umt5"
  encoder_dir.mkdir()
  config = {**UMT5Config(name="tiny", vocab_size=64, dim=DIT.text_dim, num_heads=2, head_dim=8, ffn_dim=48,
                         num_layers=1, text_len=DIT.text_len).to_dict(), "fingerprint": "test"}
  (encoder_dir / "config.json").write_text(json.dumps({"kind": "umt5", "config": config}))
  cache = PromptCache(tmp_path / "cache", text_encoder_identity(encoder_dir))
  embedding = np.random.default_rng(0).standard_normal((DIT.text_len, DIT.text_dim)).astype(ml_dtypes.bfloat16)
  cache.entry_path("make it snowy").parent.mkdir(parents=True)
  np.save(cache.entry_path("make it snowy"), embedding)
  args = argparse.Namespace(context=None, prompt_cache=str(tmp_path / "cache"), prompt="make it snowy", schedule=[],
                            models=default_model.ModelDirs(dit="dit", vae="vae", text_encoder=str(encoder_dir)))
  [context] = stream.load_contexts(args, DIT)
  assert context.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(context, embedding[None])


def test_clear_errors(setup, tmp_path):
  """Each bad invocation fails before any model loads, with a message naming the file and the problem."""
  args = functools.partial(cli_args, setup, tmp_path / "out.rgb")
  with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory \(expected a converted dit model, "
                                              r"written by python -m convert.wan_dit"):
    stream.main([*args(), "--dit", str(tmp_path / "nowhere")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty is not a converted model directory: it has no config.json"):
    stream.main([*args(), "--vae", str(tmp_path / "empty")])
  t2v = tmp_path / "t2v"
  t2v.mkdir()
  (t2v / "config.json").write_text(json.dumps({"kind": "dit", "config": dataclasses.asdict(
      DIT.replace(in_channels=16))}))
  with pytest.raises(ValueError, match=r"t2v: config 'tiny' has in_channels 16, expected 32 \(an editing model"):
    stream.main([*args(), "--dit", str(t2v)])
  with pytest.raises(ValueError, match=r"--height 40 and --width 48 must be positive multiples of 16 and 16"):
    stream.main([*args(), "--height", "40"])
  with pytest.raises(ValueError, match=r"bad --input-size '48by32': expected WxH"):
    stream.main([*args(), "--input-size", "48by32"])
  with pytest.raises(video_io.VideoIOError, match=r"input.rgb: 115200 bytes is not a whole number of 47x32 rgb24 "
                                                  r"frames \(4512 bytes each\); is --input-size right\?"):
    stream.main([*args(), "--input-size", "47x32"])
  with pytest.raises(video_io.VideoIOError, match=r"cannot read .*missing.mp4: no such file"):
    stream.main(args(input=str(tmp_path / "missing.mp4")))
  not_video = tmp_path / "not_video.mp4"
  not_video.write_text("hello")
  with pytest.raises(video_io.VideoIOError, match=r"cannot read .*not_video.mp4 \(ffmpeg exited with \d+ after 0 "
                                                  r"frames\):\n(.|\n)*Invalid data"):
    stream.main(args(input=str(not_video)))
  with pytest.raises(video_io.VideoIOError, match=r"cannot read webcam:/dev/video-missing \(ffmpeg exited with \d+ "
                                                  r"after 0 frames\):\n(.|\n)*Cannot open video device"):
    stream.main(args(input="webcam:/dev/video-missing"))
  bad_context = tmp_path / "context.npy"
  np.save(bad_context, np.zeros((1, 5, DIT.text_dim + 1), np.float32))
  with pytest.raises(ValueError, match=r"context.npy: prompt embedding has shape \[1, 5, 41\] \(float32\), "
                                       r"expected a float \[1, L ≤ 16, 40\]"):
    stream.main([*args(), "--context", str(bad_context)])


def test_native_reader_names_a_bad_file(tmp_path):
  with pytest.raises(video_io.VideoIOError, match=r"cannot read .*absent.mp4: no such file"):
    video_io.open_native_reader(str(tmp_path / "absent.mp4"))
  (tmp_path / "notes.mp4").write_text("not a video")
  with pytest.raises(video_io.VideoIOError, match=r"cannot read .*notes.mp4: ffmpeg finds no video stream in it"):
    video_io.open_native_reader(str(tmp_path / "notes.mp4"))


def test_an_autoencoder_of_2x_time_compression_streams_in_its_chunks(setup, tmp_path):
  """A VAE compressing time 2× (the tiny one with its last temporal downsampler turned off) streams in chunks
  of 5 then 6 frames (3 latents each), and the CLI writes what the Python pipeline decodes from those chunks."""
  vae_config = VAE.replace(temporal_downsample=(False, True, False))
  param_io.save_params(tmp_path / "vae2", "vae", vae_config.to_dict(),
                       random_vae_params(vae_config, np.random.default_rng(1)))
  frames = setup["frames"][:14]  # chunks of 5, 6 and 3 (padded to 6) frames
  frames.tofile(tmp_path / "input.rgb")
  stream.main(cli_args(setup, tmp_path / "out.rgb", "--vae", str(tmp_path / "vae2"), input=str(tmp_path / "input.rgb")))
  dit_config, dit_params = load_dit(setup["dit"], compute_dtype="float32")
  vae_config, vae_params = load_vae(tmp_path / "vae2", compute_dtype="float32")
  assert vae_config.temporal_factor == 2
  state = init_stream(dit_config, dit_params, np.load(setup["context"]), latent_height=H // 8, latent_width=W // 8,
                      options=StreamConfig(mask_cache=MaskCacheConfig(prune_ratio=0.7, cache_on="self_attn")),
                      rng=jax.random.key(3))
  vae_state = autoencoders.init_state(vae_config, vae_config, 1, H, W)
  expected = []
  for i, chunk in enumerate((slice(0, 5), slice(5, 11), slice(11, 14))):
    part = frames[chunk]
    part = np.concatenate([part, np.repeat(part[-1:], 6 - len(part), 0)]) if i == 2 else part
    vae_state, latents = stream.encode_chunk(vae_config, vae_params, vae_state,
                                             part[None].astype(np.float32) / 127.5 - 1, first=i == 0)
    assert latents.shape[1] == 3
    edited, state = stream_step(dit_config, dit_params, state, latents)
    vae_state, decoded = stream.decode_chunk(vae_config, vae_params, vae_state, edited, first=i == 0)
    expected.append(np.clip(np.rint((np.asarray(decoded[0, :chunk.stop - chunk.start]) + 1) * 127.5), 0, 255))
  np.testing.assert_array_equal(read_raw(tmp_path / "out.rgb"), np.concatenate(expected).astype(np.uint8))
