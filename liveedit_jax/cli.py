"""What every `python -m` entry point shares: one-line errors, progress in one style, outputs that never half-exist.

    from liveedit_jax import cli

    def main(argv: list[str] | None = None) -> None:
      parser = cli.ArgumentParser(prog="python -m liveedit_jax.thing", description=__doc__)
      parser.add_argument("--output", required=True, help="the file to write")
      parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
      args = parser.parse_args(argv)                  # --help lists every option's default value
      cli.refuse_existing(args.output, args.overwrite)
      with cli.status(f"loading the DiT from {path} ({cli.format_bytes(cli.disk_bytes(path))})") as s:
        model = load(path)
        s.note(f"{cli.format_count(n)} parameters")   # "loading ...: done in 3.1 s, 1.4 B parameters"
      with cli.atomic_output(args.output) as tmp:    # a hidden sibling of args.output with its suffix
        write(tmp)                                   # renamed onto args.output only if the block succeeds
      for clip in cli.progress(clips, desc="evaluate", unit="clip"):
        ...

    if __name__ == "__main__":
      cli.run(main)

The API, all of it:
  run(main, argv=None)      calls main(argv) and exits: 0; 1 with "error: <message>" for a user error (the
                            exception types of USER_ERRORS: UserError, ValueError, OSError, and VideoIOError,
                            NonFiniteError, out of device memory); 2 for a usage error
                            (argparse's one line); 130 on Ctrl-C. A user error's traceback is printed only with
                            --debug (taken out of argv before main sees it) or LIVEEDIT_DEBUG=1. Other exceptions
                            are bugs and keep their traceback. Warnings print as one "warning: ..." line.
  UserError, USER_ERRORS    the exception raised for, and the types treated as, mistakes the user can fix.
  ArgumentParser            argparse.ArgumentParser whose help keeps the description's line breaks, appends
                            "(default: X)" to every option that has a default and lists --debug, and whose
                            usage errors are one line: "error: <message> (see <prog> --help)", status 2.
  refuse_existing(path, overwrite, option="--output")   FileExistsError if path exists, unless overwrite ("-",
                            stdout, always passes).
  partial_path(path)        the temporary name beside `path` (hidden, same suffix, so tools that pick a format
                            by suffix, like ffmpeg, still do): ".name.partial-1a2b3c4d.mp4".
  atomic_output(path)       context manager yielding partial_path(path); on success renames it onto `path`
                            (os.replace, so an existing file is swapped whole), on failure deletes it.
  progress(iterable=None, total=None, desc=None, unit="it", **tqdm_kwargs)   a tqdm bar on stderr; drawn only
                            when stderr is a terminal (or LIVEEDIT_PROGRESS=1), so logs and pipes get no
                            carriage-return noise.
  say(message)              one line on stderr that does not break a progress bar.
  status(what)              context manager: says "what ..." on entry and "what: done in 3.1 s[, notes]" on exit.
  CompileTimer              context manager counting the seconds JAX spends tracing, lowering and compiling
                            inside the block, in any thread (from jax.monitoring events): `with CompileTimer()
                            as t: ...; t.seconds`, `t.count`, `t.cache_hits` (those of the count that the
                            persistent compilation cache answered).
  format_bytes(n), format_count(n), format_seconds(s), disk_bytes(path), memory_summary(compiled)

This module sits below the models: it imports no model code, and JAX only inside CompileTimer.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import threading
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

from tqdm import tqdm

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIVEEDIT_DEBUG"
PROGRESS_ENV = "LIVEEDIT_PROGRESS"
STDIO = "-"


class UserError(Exception):
  """A mistake the user can fix; the message says what and where (file, option, expected vs got)."""


# Exceptions that carry a message meant for the user: bad values, missing or existing files, unreadable inputs.
# The project's own error types derive from these (CheckpointError from ValueError) or are RuntimeErrors named
# below (VideoIOError, NonFiniteError); other RuntimeErrors, KeyErrors and TypeErrors are bugs and keep their
# traceback, except XLA's out-of-memory error, which says what to reduce.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)
_USER_RUNTIME_ERRORS = ("VideoIOError", "NonFiniteError")


def _is_user_error(err: BaseException) -> bool:
  if isinstance(err, USER_ERRORS) or any(t.__name__ in _USER_RUNTIME_ERRORS for t in type(err).__mro__):
    return True
  return isinstance(err, RuntimeError) and "RESOURCE_EXHAUSTED" in str(err)


def _message(err: BaseException) -> str:
  if isinstance(err, RuntimeError) and "RESOURCE_EXHAUSTED" in str(err):
    first = next((line for line in str(err).splitlines() if "RESOURCE_EXHAUSTED" in line), "")
    return f"out of device memory ({first.strip()}); try a smaller size, batch or a lower precision"
  if isinstance(err, OSError) and err.filename is not None and err.strerror:
    return f"{err.filename}: {err.strerror}"
  return str(err) or type(err).__name__


def debug_requested(argv: Sequence[str] | None = None) -> bool:
  return DEBUG_FLAG in (sys.argv[1:] if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  return f"warning: {message}\n"


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> NoReturn:
  """Runs an entry point's `main(argv)` and exits with its status (see the module docstring)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  argv = [a for a in argv if a != DEBUG_FLAG]
  if not debug:
    warnings.formatwarning = _one_line_warning
  try:
    result = main(argv)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  except SystemExit:
    raise
  except BaseException as err:  # noqa: BLE001 (a bug keeps its traceback below)
    if not _is_user_error(err) or debug:
      traceback.print_exc()
      sys.exit(1)
    print(f"error: {_message(err)}", file=sys.stderr)
    sys.exit(1)
  sys.exit(result if type(result) is int else 0)  # noqa: E721 (a returned bool or dict is not a status)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's layout and gives every option's default value."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    # Identity, not equality: a default of 0 or 0.0 equals False but is worth showing.
    if ("%(default)" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        or not action.option_strings or action.nargs == 0):
      return text
    default = ",".join(map(str, action.default)) if isinstance(action.default, (tuple, list)) else action.default
    return f"{text} (default: {str(default).replace('%', '%%')})".lstrip()


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the project's help layout (defaults shown) and a documented --debug (handled by `run`)."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _HelpFormatter)
    super().__init__(*args, **kwargs)
    self.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS,
                      help=f"on an error, print the full traceback (or set {DEBUG_ENV}=1)")

  def add_argument(self, *args, **kwargs):
    # argparse formats no help line for an option without help text, so its default would stay hidden.
    if kwargs.get("help") is None and not any(kwargs.get("default") is v for v in (None, False, argparse.SUPPRESS)):
      kwargs["help"] = "(default: %(default)s)"
    return super().add_argument(*args, **kwargs)

  def error(self, message: str) -> NoReturn:
    """A usage mistake in one line (argparse would print the whole usage first), exit status 2."""
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def refuse_existing(path: str | os.PathLike, overwrite: bool, option: str | None = "--output") -> None:
  """Raises FileExistsError (naming `option`, when given) if `path` exists and `overwrite` is false."""
  if str(path) != STDIO and not overwrite and Path(path).exists():
    raise FileExistsError(f"{option + ' ' if option else ''}{path} exists; pass --overwrite to replace it")


def partial_path(path: str | os.PathLike) -> Path:
  """A unique temporary name in `path`'s directory that keeps its suffix: ".out.partial-1a2b3c4d.mp4"."""
  path = Path(path)
  return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds, else removes it."""
  tmp = partial_path(path)
  try:
    yield tmp
    if tmp.exists():
      os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def progress_enabled() -> bool:
  forced = os.environ.get(PROGRESS_ENV)
  if forced is not None:
    return forced not in ("", "0")
  return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, total: float | None = None, desc: str | None = None,
             unit: str = "it", **kwargs) -> tqdm:
  """A tqdm bar in the project's style (stderr, drawn only on a terminal; see the module docstring)."""
  kwargs.setdefault("disable", not progress_enabled())
  return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, **kwargs)


def say(message: str) -> None:
  """A line on stderr, printed above any progress bar."""
  tqdm.write(message, file=sys.stderr)
  sys.stderr.flush()


@dataclasses.dataclass
class _Status:
  notes: list[str] = dataclasses.field(default_factory=list)

  def note(self, text: str) -> None:
    """Adds `text` to the closing line."""
    self.notes.append(text)


@contextlib.contextmanager
def status(what: str) -> Iterator[_Status]:
  """Says `what ...` now and `what: done in N s[, notes]` when the block ends without an error."""
  say(f"{what} ...")
  start = time.perf_counter()
  s = _Status()
  yield s
  say(f"{what}: done in {format_seconds(time.perf_counter() - start)}" + "".join(f", {n}" for n in s.notes))


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_compile_totals = {"seconds": 0.0, "count": 0, "cache_hits": 0}
_totals_lock = threading.Lock()  # events come from every thread that compiles (e.g. a pool compiling at once)
_listener_lock = threading.Lock()
_listening = False


def _on_duration(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    with _totals_lock:
      _compile_totals["seconds"] += duration
      _compile_totals["count"] += event == _COMPILE_EVENTS[-1]


def _on_event(event: str, **_) -> None:
  if event == _CACHE_HIT_EVENT:
    with _totals_lock:
      _compile_totals["cache_hits"] += 1


class CompileTimer:
  """Seconds JAX spent tracing, lowering and compiling within the block (`seconds`), XLA compiles (`count`) and
  how many of those the persistent compilation cache answered (`cache_hits`)."""

  def __enter__(self) -> "CompileTimer":
    global _listening
    with _listener_lock:
      if not _listening:
        import jax.monitoring  # noqa: PLC0415 (JAX only where compiles are timed)

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    self._start = dict(_compile_totals)
    self.seconds, self.count, self.cache_hits = 0.0, 0, 0
    return self

  def __exit__(self, *exc) -> None:
    self.seconds = _compile_totals["seconds"] - self._start["seconds"]
    self.count = _compile_totals["count"] - self._start["count"]
    self.cache_hits = _compile_totals["cache_hits"] - self._start["cache_hits"]


def format_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if abs(n) < 1000:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def format_count(n: float) -> str:
  """1_420_000_000 → "1.42 B", 11_300_000 → "11.3 M", 950 → "950"."""
  for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g} {unit}"
  return f"{n:g}"


def format_seconds(s: float) -> str:
  if s < 60:
    return f"{s:.1f} s"
  minutes, seconds = divmod(round(s), 60)
  return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def disk_bytes(path: str | os.PathLike) -> int:
  """Size of a file, or of every file under a directory."""
  path = Path(path)
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def memory_summary(compiled: Any) -> str:
  """A compiled executable's `memory_analysis()` in one short phrase (per device), or "" when it has none."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (backends without the analysis raise various errors)
    return ""
  if stats is None:
    return ""
  parts = [(name, getattr(stats, f"{field}_size_in_bytes", 0) or 0)
           for name, field in (("arguments", "argument"), ("outputs", "output"), ("temporaries", "temp"),
                               ("aliased", "alias"))]
  return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts if n)
