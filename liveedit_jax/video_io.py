"""Frame readers and writers for streaming, built on the ffmpeg binary that `imageio-ffmpeg` ships.

    with open_reader("in.mp4", width=832, height=480, fps=16) as reader, open_writer("out.mp4", 832, 480, 16) as w:
      while len(frames := reader.read(12)):          # uint8 [T ≤ 12, 480, 832, 3]
        w.write(frames)                              # written and flushed at once

Inputs (`open_reader`):
  a video file      decoded by ffmpeg, resampled to `fps`, scaled to cover width × height and center-cropped.
  "webcam:DEVICE"   ffmpeg's v4l2 input (e.g. webcam:/dev/video0), processed as a file.
  "-" or "*.rgb"    raw rgb24 frames of `input_size` (W, H) on stdin or in a file, taken frame by frame (no
                    resampling); read directly when `input_size` is the model's size, else scaled by ffmpeg.
  "synthetic:SEED[:FRAMES]"   the source clip of the procedural benchmark's test example SEED
                    (`synthetic.make_example("test", SEED, ...)`), rendered at width × height, FRAMES frames
                    (default 33, the benchmark's clips) at the benchmark's 16 fps whatever `fps`; the reader's
                    `example` holds the whole example (target, mask, instruction).
Outputs (`open_writer`):
  "-" or "*.rgb"    raw rgb24 frames on stdout or in a file, flushed after every `write`.
  a video file      encoded by ffmpeg (libx264, yuv420p for .mp4 / .mov / .mkv). An .mp4 / .mov is fragmented
                    (a fragment per keyframe, a keyframe per second), so frames land on disk as they are encoded
                    and a killed run leaves a playable prefix; `close()` finalises the file.
A file is written under a temporary name beside it (`cli.partial_path`) and renamed onto its own name once the
first `write` has gone through: a run that fails before its first chunk leaves nothing under the requested name
(and an existing file there untouched), and a run stopped later leaves its written prefix. An existing file is
refused unless `overwrite`. `count_frames` estimates an input's length (for progress), without decoding it.

Frames are uint8 [T, H, W, 3] RGB numpy arrays; `to_float` / `to_uint8` convert to and from the models' [−1, 1].
ffmpeg runs in its own session, so a Ctrl-C reaches only Python, whose `finally` then closes the writer cleanly.
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from liveedit_jax import cli, synthetic


def _ffmpeg() -> str:
  """The ffmpeg binary that imageio-ffmpeg ships (imported here: raw rgb24 input and output need no ffmpeg)."""
  import imageio_ffmpeg  # noqa: PLC0415

  return imageio_ffmpeg.get_ffmpeg_exe()


STDIO = "-"
RAW_SUFFIX = ".rgb"
WEBCAM_PREFIX = "webcam:"
SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_SPLIT = "test"
SYNTHETIC_FRAMES = 33  # the benchmark's clips (and the default model's)
_X264_CONTAINERS = (".mp4", ".mov", ".mkv")
_FRAGMENTED_CONTAINERS = (".mp4", ".mov")


class VideoIOError(RuntimeError):
  """An input that cannot be read or an output that cannot be written (the message names it and says why)."""


def is_raw(path: str) -> bool:
  """Whether `path` names raw rgb24 frames (stdin / stdout or a .rgb file)."""
  return path == STDIO or path.lower().endswith(RAW_SUFFIX)


def is_synthetic(source: str) -> bool:
  """Whether `source` names a benchmark example ("synthetic:SEED[:FRAMES]")."""
  return source.startswith(SYNTHETIC_PREFIX)


def parse_synthetic(source: str) -> tuple[int, int]:
  """"synthetic:SEED[:FRAMES]" → (SEED, FRAMES), FRAMES SYNTHETIC_FRAMES when left out."""
  match = re.fullmatch(r"synthetic:(\d+)(?::(\d+))?", source)
  if not match or match[2] is not None and int(match[2]) < 1:
    raise ValueError(f"bad input {source!r}: expected synthetic:SEED or synthetic:SEED:FRAMES (SEED ≥ 0, "
                     f"FRAMES ≥ 1), e.g. synthetic:7 or synthetic:7:{SYNTHETIC_FRAMES}")
  return int(match[1]), int(match[2] or SYNTHETIC_FRAMES)


def parse_size(text: str, what: str = "--input-size") -> tuple[int, int]:
  """"WxH" → (W, H), both positive."""
  match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
  if not match or 0 in (size := (int(match[1]), int(match[2]))):
    raise ValueError(f"bad {what} {text!r}: expected WxH with positive integers, e.g. 832x480")
  return size


def to_float(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] → float32 in [−1, 1] (0 → −1, 255 → 1)."""
  return frames.astype(np.float32) / 127.5 - 1.0


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """float in [−1, 1] → uint8 [..., 3], rounded to nearest; values outside [−1, 1] are clipped."""
  return np.clip(np.rint((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _ffmpeg_log() -> BinaryIO:
  # ffmpeg's stderr goes to a file, not a pipe: an unread pipe would block ffmpeg once it holds 64 KiB.
  return tempfile.TemporaryFile()


def _log_text(log: BinaryIO) -> str:
  log.seek(0)
  text = log.read().decode(errors="replace").strip()
  return "\n  ".join(text.splitlines()[-8:]) or "(no message)"


def _resize_filter(width: int, height: int) -> str:
  """Scale to cover width × height keeping the aspect ratio, then center-crop to it."""
  return f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height}"


class FrameReader:
  """Reads uint8 [T, H, W, 3] frames from a byte stream: a raw file, stdin, or an ffmpeg process's stdout."""

  def __init__(self, name: str, stream: BinaryIO, width: int, height: int,
               process: subprocess.Popen | None = None, log: BinaryIO | None = None):
    self.name = name
    self.width, self.height = width, height
    self.frames_read = 0
    self._stream, self._process, self._log = stream, process, log

  @property
  def frame_bytes(self) -> int:
    return self.width * self.height * 3

  def read(self, count: int) -> np.ndarray:
    """Up to `count` frames, uint8 [T ≤ count, H, W, 3]; fewer only at the end of the input."""
    data = self._stream.read(count * self.frame_bytes)
    if len(data) % self.frame_bytes:
      raise VideoIOError(f"{self.name}: the input ended inside a frame ({len(data) % self.frame_bytes} of "
                         f"{self.frame_bytes} bytes of a {self.width}x{self.height} rgb24 frame); is "
                         f"--input-size right?")
    if len(data) < count * self.frame_bytes:
      self._check_finished()
    frames = np.frombuffer(data, np.uint8).reshape(-1, self.height, self.width, 3)
    self.frames_read += len(frames)
    return frames

  def _check_finished(self) -> None:
    """At the end of ffmpeg's output: raises with ffmpeg's message if it failed."""
    if self._process is None:
      return
    if self._process.wait() != 0:
      raise VideoIOError(f"cannot read {self.name} (ffmpeg exited with {self._process.returncode} after "
                         f"{self.frames_read} frames):\n  {_log_text(self._log)}")

  def close(self) -> None:
    if self._process is not None:
      if self._process.poll() is None:
        self._process.terminate()
      self._process.stdout.close()
      self._process.wait()
      self._log.close()
    elif self._stream is not sys.stdin.buffer:
      self._stream.close()

  def __enter__(self) -> "FrameReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class SyntheticReader(FrameReader):
  """A benchmark example's source clip, read as any input is; `example` is the whole `synthetic.EditExample`."""

  def __init__(self, name: str, example: synthetic.EditExample):
    _, height, width, _ = example.source.shape
    super().__init__(name, io.BytesIO(example.source.tobytes()), width, height)
    self.example = example


def open_reader(source: str, width: int, height: int, fps: float,
                input_size: tuple[int, int] | None = None) -> FrameReader:
  """Frames of `source` (see the module docstring), as uint8 width × height.

  input_size: (W, H) of raw rgb24 input; required for "-" and .rgb sources, refused for others.
  fps: frame rate that video files and webcams are resampled to (raw input has no timestamps).
  """
  if is_synthetic(source):
    if input_size is not None:
      raise ValueError(f"--input-size applies to raw rgb24 input ('-' or *{RAW_SUFFIX}), not to {source!r}, "
                       f"which is rendered at the model's size")
    seed, frames = parse_synthetic(source)
    return SyntheticReader(source, synthetic.make_example(SYNTHETIC_SPLIT, seed, frames=frames, height=height,
                                                          width=width))
  raw = is_raw(source)
  if raw and input_size is None:
    raise ValueError(f"raw rgb24 input ({source!r}) needs --input-size WxH")
  if not raw and input_size is not None:
    raise ValueError(f"--input-size applies to raw rgb24 input ('-' or *{RAW_SUFFIX}), not to {source!r}, "
                     f"whose size ffmpeg reads from the stream")
  name = "stdin" if source == STDIO else source
  if source != STDIO and not source.startswith(WEBCAM_PREFIX):
    if not Path(source).is_file():
      raise VideoIOError(f"cannot read {source}: no such file")
  if raw:
    in_w, in_h = input_size
    if source != STDIO and (size := Path(source).stat().st_size) % (in_w * in_h * 3):
      raise VideoIOError(f"{source}: {size} bytes is not a whole number of {in_w}x{in_h} rgb24 frames "
                         f"({in_w * in_h * 3} bytes each); is --input-size right?")
    if (in_w, in_h) == (width, height):
      stream = sys.stdin.buffer if source == STDIO else open(source, "rb")
      return FrameReader(name, stream, width, height)
    input_args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{in_w}x{in_h}", "-framerate", str(fps),
                  "-i", "pipe:0" if source == STDIO else source]
    video_filter = _resize_filter(width, height)
  else:
    if source.startswith(WEBCAM_PREFIX):
      input_args = ["-f", "v4l2", "-i", source[len(WEBCAM_PREFIX):]]
    else:
      input_args = ["-i", source]
    video_filter = f"fps={fps},{_resize_filter(width, height)}"
  # -nostdin keeps ffmpeg off our stdin unless stdin is the input.
  cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error",
         *([] if source == STDIO else ["-nostdin"]), *input_args,
         "-map", "0:v:0", "-vf", video_filter, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
  log = _ffmpeg_log()
  process = subprocess.Popen(cmd, stdin=None if source == STDIO else subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=log, start_new_session=True)
  return FrameReader(name, process.stdout, width, height, process, log)


def open_native_reader(path: str) -> FrameReader:
  """Frames of the video file `path` at its own size and frame rate (for data preparation, where the files are the
  data and resampling would change them). ffmpeg runs as a new session, without a Python pre-exec hook, so no
  Python code runs in a child forked from a multithreaded (JAX) process."""
  if not Path(path).is_file():
    raise VideoIOError(f"cannot read {path}: no such file")
  probe = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, start_new_session=True)
  # ffmpeg describes each input stream on stderr, e.g. "Stream #0:0: Video: h264 (...), yuv420p, 48x32, ...".
  size = re.search(rb"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})", probe.stderr)
  if size is None:
    raise VideoIOError(f"cannot read {path}: ffmpeg finds no video stream in it")
  width, height = int(size[1]), int(size[2])
  cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path, "-map", "0:v:0", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:1"]
  log = _ffmpeg_log()
  process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
  return FrameReader(path, process.stdout, width, height, process, log)


def count_frames(source: str, width: int, height: int, fps: float,
                 input_size: tuple[int, int] | None = None) -> int | None:
  """About how many frames `open_reader(source, width, height, fps, input_size)` yields; None when unknown.

  Raw files and synthetic inputs: exact (size / frame bytes; FRAMES). Video files: their duration (ffmpeg's
  header line, nothing decoded) times `fps`, to within a frame. stdin and webcams: None.
  """
  if is_synthetic(source):
    return parse_synthetic(source)[1]
  if source == STDIO or source.startswith(WEBCAM_PREFIX) or not Path(source).is_file():
    return None
  if is_raw(source):
    if input_size is None:
      return None
    return Path(source).stat().st_size // (input_size[0] * input_size[1] * 3)
  # Without an output ffmpeg only reads the header, prints it and exits (with an error, which is expected).
  result = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", source], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, start_new_session=True)
  match = re.search(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", result.stderr)
  if not match:
    return None
  seconds = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
  return max(1, math.ceil(seconds * fps - 1e-6))


class _Published:
  """An output file written under `partial` and renamed onto `path` by the first `publish()` (module docstring)."""

  def __init__(self, path: str, overwrite: bool):
    cli.refuse_existing(path, overwrite, option=None)
    self.path = path
    self.partial = cli.partial_path(path)
    self.published = False

  def publish(self) -> None:
    if not self.published:
      os.replace(self.partial, self.path)
      self.published = True

  def discard(self) -> None:
    """Removes the file if it was never published (nothing complete was written)."""
    if not self.published and self.partial.exists():
      self.partial.unlink()


class RawWriter:
  """Writes rgb24 frames to a file or stdout, flushing after each `write`."""

  def __init__(self, path: str, width: int, height: int, overwrite: bool = False):
    self.width, self.height = width, height
    self.frames_written = 0
    self._file = None if path == STDIO else _Published(path, overwrite)
    self.name = "stdout" if path == STDIO else path
    self._stream = sys.stdout.buffer if path == STDIO else None  # a file opens at the first write

  def write(self, frames: np.ndarray) -> None:
    """frames: uint8 [T, H, W, 3]."""
    _check_frames(frames, self.width, self.height)
    if self._stream is None:
      self._stream = open(self._file.partial, "wb")
    try:
      self._stream.write(np.ascontiguousarray(frames).tobytes())
      self._stream.flush()
    except BrokenPipeError as e:
      raise VideoIOError(f"cannot write to {self.name}: the reading end closed") from e
    self.frames_written += len(frames)
    if self._file is not None:
      self._file.publish()

  def close(self) -> None:
    if self._file is not None:
      if self._stream is not None:
        self._stream.close()
      self._file.discard()

  def __enter__(self) -> "RawWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class VideoWriter:
  """Encodes frames to a video file through ffmpeg. The process starts at the first `write`, so a run that
  fails before producing a frame leaves no file; `close()` waits for ffmpeg to finalise the file."""

  def __init__(self, path: str, width: int, height: int, fps: float, overwrite: bool = False):
    self._file = _Published(path, overwrite)
    self.name = path
    self.width, self.height, self.fps = width, height, fps
    self.frames_written = 0
    self._process: subprocess.Popen | None = None
    self._log: BinaryIO | None = None

  def _start(self) -> subprocess.Popen:
    suffix = Path(self.name).suffix.lower()
    codec = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"] if suffix in _X264_CONTAINERS else []
    # zerolatency: no lookahead or B-frames, so each frame is encoded when it arrives, not a GOP later.
    # Fragments at each keyframe (one per second, -g) put encoded frames on disk while the stream runs.
    fragments = ["-g", str(round(self.fps)), "-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
    cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps),
           "-i", "pipe:0", *codec, "-pix_fmt", "yuv420p",
           *(fragments if suffix in _FRAGMENTED_CONTAINERS else []), str(self._file.partial)]
    self._log = _ffmpeg_log()
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                            start_new_session=True)

  def write(self, frames: np.ndarray) -> None:
    """frames: uint8 [T, H, W, 3]; handed to ffmpeg at once (it writes them as it encodes them)."""
    _check_frames(frames, self.width, self.height)
    if self._process is None:
      self._process = self._start()
    try:
      self._process.stdin.write(np.ascontiguousarray(frames).tobytes())
      self._process.stdin.flush()
    except BrokenPipeError as e:
      self._process.wait()
      raise VideoIOError(f"cannot write {self.name} (ffmpeg exited with {self._process.returncode}):\n  "
                         f"{_log_text(self._log)}") from e
    self.frames_written += len(frames)
    self._publish_once_open()

  def _publish_once_open(self, wait_s: float = 10.0) -> None:
    """Renames the output onto its name once ffmpeg has created it (so holds it open, and keeps writing to the
    renamed file: no muxer used here reopens it by name). ffmpeg opens its output only after it has read the
    first frames; a large first write returns after that, a small one may return before, hence the wait."""
    deadline = time.monotonic() + wait_s
    while not self._file.published:
      if self._file.partial.exists():
        self._file.publish()
      elif time.monotonic() > deadline or self._process.poll() is not None:
        return  # tried again at the next write and at close
      else:
        time.sleep(0.005)

  def close(self) -> None:
    """Finalises the file: ffmpeg encodes what it holds and writes the trailer once its input closes."""
    if self._process is None:
      return
    process, self._process = self._process, None
    try:
      process.stdin.close()
    except BrokenPipeError:
      pass  # ffmpeg already exited; its exit status below says why
    try:
      if process.wait() != 0:
        raise VideoIOError(f"cannot write {self.name} (ffmpeg exited with {process.returncode}):\n  "
                           f"{_log_text(self._log)}")
      if self._file.partial.exists():
        self._file.publish()
    finally:
      self._log.close()
      self._file.discard()

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _check_frames(frames: np.ndarray, width: int, height: int) -> None:
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
    raise ValueError(f"frames must be uint8 [T, {height}, {width}, 3], got {frames.dtype} {list(frames.shape)}")


def open_writer(path: str, width: int, height: int, fps: float, overwrite: bool = False) -> RawWriter | VideoWriter:
  """A writer for "-" / *.rgb (raw rgb24) or a video file (see the module docstring).

  overwrite: replace an existing file (once the first write has gone through); without it, FileExistsError.
  """
  if path != STDIO and not Path(path).absolute().parent.is_dir():
    raise VideoIOError(f"cannot write {path}: directory {Path(path).absolute().parent} does not exist")
  if path != STDIO and Path(path).is_dir():
    raise VideoIOError(f"cannot write {path}: it is a directory")
  if is_raw(path):
    return RawWriter(path, width, height, overwrite)
  return VideoWriter(path, width, height, fps, overwrite)
