"""liveedit_jax.cli: one-line user errors (tracebacks only on request), help with the real defaults, outputs that
appear whole or not at all, and the compile timer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import cli


def _run(main, argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, argv)
  return exit_info.value.code, capsys.readouterr().err


def _fails(kind, message):
  def main(argv):
    raise kind(message)
  return main


@pytest.mark.parametrize("kind", [ValueError, FileNotFoundError, FileExistsError, cli.UserError])
def test_user_error_is_one_line(kind, capsys, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  code, err = _run(_fails(kind, "in.mp4: no such file"), [], capsys)
  assert code == 1 and err == "error: in.mp4: no such file\n"


def test_os_error_names_the_file(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  code, err = _run(lambda argv: open(tmp_path / "absent.json").read(), [], capsys)
  assert code == 1 and err == f"error: {tmp_path / 'absent.json'}: No such file or directory\n"


def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
  seen = []

  def main(argv):
    seen.append(argv)
    raise ValueError("bad --prune 2")

  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  code, err = _run(main, ["--prune", "2", "--debug"], capsys)
  assert code == 1 and err.startswith("Traceback") and err.endswith("ValueError: bad --prune 2\n")
  assert seen == [["--prune", "2"]]  # --debug is taken out before main parses
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  code, err = _run(main, [], capsys)
  assert code == 1 and "Traceback" in err


def test_bugs_keep_their_traceback(capsys, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  code, err = _run(_fails(TypeError, "unsupported operand"), [], capsys)
  assert code == 1 and err.startswith("Traceback") and "TypeError: unsupported operand" in err


def test_exit_codes(capsys):
  assert _run(lambda argv: None, [], capsys)[0] == 0
  assert _run(lambda argv: 3, [], capsys)[0] == 3
  assert _run(lambda argv: {"summary": 1}, [], capsys)[0] == 0
  code, err = _run(_fails(KeyboardInterrupt, ""), [], capsys)
  assert code == 130 and err == "interrupted\n"


def test_usage_error_is_one_line_and_help_shows_defaults(capsys):
  parser = cli.ArgumentParser(prog="python -m tool", description="Line one.\n  indented line two")
  parser.add_argument("--height", type=int, default=480, help="frame height")
  parser.add_argument("--prune", type=float, default=0.7)
  parser.add_argument("--sizes", default=(3, 4), help="sizes")
  parser.add_argument("--name", help="no default")
  parser.add_argument("--fast", action="store_true", help="a flag")
  parser.add_argument("--rate", default=5, help="in %% per step")
  with pytest.raises(SystemExit) as exit_info:
    parser.parse_args(["--height", "tall"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == ("error: argument --height: invalid int value: 'tall' "
                                     "(see python -m tool --help)\n")
  text = parser.format_help()
  assert "Line one.\n  indented line two" in text
  flat = " ".join(text.split())
  for expected in ("--height HEIGHT frame height (default: 480)", "--prune PRUNE (default: 0.7)",
                   "--sizes SIZES sizes (default: 3,4)", "--name NAME no default --fast a flag",
                   "--rate RATE in % per step (default: 5)", "--debug on an error, print the full traceback"):
    assert expected in flat, expected
  assert "(default: None)" not in text and "(default: False)" not in text
  assert parser.parse_args(["--debug"]).height == 480  # accepted where main is called without cli.run


def test_atomic_output_renames_on_success_and_removes_on_failure(tmp_path):
  target = tmp_path / "out.json"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with cli.atomic_output(target) as tmp:
      assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".out.partial-")
      tmp.write_text("half")
      raise RuntimeError("disk full")
  assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
  with cli.atomic_output(target) as tmp:
    tmp.write_text(json.dumps({"a": 1}))
    assert target.read_text() == "old"  # not yet
  assert json.loads(target.read_text()) == {"a": 1} and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_refuse_existing(tmp_path):
  target = tmp_path / "out.mp4"
  cli.refuse_existing(target, overwrite=False)  # absent: fine
  target.write_bytes(b"x")
  with pytest.raises(FileExistsError, match=r"--output .*out.mp4 exists; pass --overwrite to replace it"):
    cli.refuse_existing(target, overwrite=False)
  cli.refuse_existing(target, overwrite=True)
  cli.refuse_existing("-", overwrite=False)


def test_status_lines(capsys):
  with cli.status("loading the VAE from vae/ (3.2 MB)") as s:
    s.note("1.5 M parameters")
  lines = capsys.readouterr().err.splitlines()
  assert lines[0] == "loading the VAE from vae/ (3.2 MB) ..."
  assert lines[1].startswith("loading the VAE from vae/ (3.2 MB): done in ") and lines[1].endswith(
      " s, 1.5 M parameters")
  with pytest.raises(ValueError):
    with cli.status("loading"):
      raise ValueError("x")
  assert capsys.readouterr().err == "loading ...\n"  # no "done" after a failure


def test_compile_timer_counts_a_new_compile_only():
  size = int(np.random.default_rng().integers(100, 10_000))  # a shape no other test compiled
  f = jax.jit(lambda x: jnp.sin(x) * 2)
  x = np.ones(size, np.float32)
  with cli.CompileTimer() as first:
    f(x).block_until_ready()
  with cli.CompileTimer() as again:
    f(x).block_until_ready()
  assert first.count == 1 and first.seconds > 0
  assert again.count == 0 and again.seconds == 0


def test_formats(tmp_path):
  assert [cli.format_count(n) for n in (1_420_000_000, 11_300_000, 1500, 950)] == ["1.42 B", "11.3 M", "1.5 k",
                                                                                   "950"]
  assert [cli.format_bytes(n) for n in (512, 5_700_000_000, 3_200_000)] == ["512 B", "5.7 GB", "3.2 MB"]
  assert [cli.format_seconds(s) for s in (3.14, 125, 7300)] == ["3.1 s", "2 min 05 s", "2 h 01 min"]
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "a").write_bytes(b"12345")
  (tmp_path / "d" / "b").write_bytes(b"123")
  assert cli.disk_bytes(tmp_path / "d") == 8 and cli.disk_bytes(tmp_path / "d" / "a") == 5
