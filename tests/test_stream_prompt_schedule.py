"""`python -m liveedit_jax.stream` with a prompt schedule (--prompt-at, --prompt-schedule, --recache): the frames
before a switch are the run's without the schedule and those after it differ (both KV policies, with and without
the mask cache), a switch to the same prompt changes nothing without the mask cache, a switch compiles nothing
while streaming, the text encoder is loaded once for every prompt, and bad schedules fail in one line.

The schedule is embedded by a text encoder (--context is refused with it), so the tiny DiT here is `test_stream_cli`'s
with the text width and length of the default model's text encoder (128, 24 tokens), the real small umT5 shipped in
the package (a sentencepiece tokenizer and 0.7 MB of weights). The input and the VAE are `test_stream_cli`'s: 25
frames of 32×48 in chunks of 9, 12 and 4 video frames, so chunks start at input frames 0, 9 and 21.
"""

import dataclasses
import re

import jax
import numpy as np
import pytest

from liveedit_jax import cli, param_io, stream
from liveedit_jax.dit import init_dit_params
from tests.test_stream_cli import DIT, FRAMES, H, W, cli_args, read_raw, setup  # noqa: F401 (setup: a fixture)

PROMPT = "make the red circle blue"  # words the default tokenizer knows: no <unk> warning
OTHER = "make the red square green"
NO_MASK = ("--cache-on", "none")


@pytest.fixture(scope="module")
def dit_dir(setup):  # noqa: F811 (the imported fixture)
  """A tiny random DiT for the default text encoder's embeddings; its head random, so every output depends on the
  whole network (Wan zero-initialises it)."""
  config = DIT.replace(text_dim=128, text_len=24)
  params = init_dit_params(config, jax.random.key(0))
  params["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), params["head"]["proj"]["kernel"].shape)
  # The text embedding's initial weights (std 0.02) shrink the context to nearly nothing, which would leave the
  # cross-attention K/V almost the same for any prompt; fan-in scaled weights make the edit follow the prompt.
  for i, layer in enumerate(("fc1", "fc2")):
    kernel = params["text_embedding"][layer]["kernel"]
    params["text_embedding"][layer]["kernel"] = jax.random.normal(jax.random.key(2 + i), kernel.shape) / np.sqrt(
        kernel.shape[0])
  path = setup["root"] / "dit_umt5"
  param_io.save_params(path, "dit", dataclasses.asdict(config), params)
  return str(path)


def schedule_args(setup, dit_dir, output, *extra):  # noqa: F811
  """test_stream_cli's arguments with this DiT and the default model's text encoder embedding --prompt, instead of
  a precomputed --context."""
  args = cli_args(setup, output, "--prompt", PROMPT, *extra)
  i = args.index("--context")
  del args[i:i + 2]
  args[args.index("--dit") + 1] = dit_dir
  return args


@pytest.fixture(scope="module")
def run(setup, dit_dir):  # noqa: F811
  """run(*extra) → (the frames [T, H, W, 3] written, the stderr lines) of a run with these extra arguments, each run
  once per module (the runs are deterministic), its stderr read through `capsys` (set by the `runs` fixture)."""
  done = {}

  def run_once(*extra):
    if extra not in done:
      output = setup["root"] / f"schedule-{len(done)}.rgb"
      run_once.capsys.readouterr()  # what the test printed before
      stream.main(schedule_args(setup, dit_dir, output, *extra))
      done[extra] = read_raw(output), run_once.capsys.readouterr().err.splitlines()
    return done[extra]

  return run_once


@pytest.fixture
def runs(run, capsys):
  """`run`, reading stderr through this test's capsys."""
  run.capsys = capsys
  return run


@pytest.mark.parametrize("mask", [(), NO_MASK], ids=["mask-cache", "no-mask-cache"])
@pytest.mark.parametrize("policy", [(), ("--recache",)], ids=["keep", "recache"])
def test_frames_change_from_the_first_chunk_at_or_after_the_frame(runs, mask, policy):
  """--prompt-at 15 takes effect at chunk 2 (input frames 21-24): frames 0-20 are bit for bit the run's without a
  schedule, frames 21-24 differ; every frame is written at its size. One line tells of the switch."""
  plain, _ = runs(*mask)
  switched, lines = runs(*mask, *policy, "--prompt-at", f"15:{OTHER}")
  assert switched.shape == plain.shape == (FRAMES, H, W, 3)
  np.testing.assert_array_equal(switched[:21], plain[:21])
  assert np.abs(switched[21:].astype(int) - plain[21:]).mean() > 1  # an edit changed, not a rounding
  kv = "re-cached under it" if policy else "kept"
  assert [line for line in lines if line.startswith("prompt switch")] == [
      f"prompt switch before chunk 2 (input frame 21; --prompt-at '15:{OTHER}'): {OTHER!r}, the KV cache {kv}"]


@pytest.mark.parametrize("mask", [(), NO_MASK], ids=["mask-cache", "no-mask-cache"])
def test_recache_changes_the_frames_after_the_switch(runs, mask):
  """The two policies differ only after the switch: re-caching rebuilt the past frames' K/V under the new prompt."""
  keep, _ = runs(*mask, "--prompt-at", f"15:{OTHER}")
  recache, _ = runs(*mask, "--recache", "--prompt-at", f"15:{OTHER}")
  np.testing.assert_array_equal(keep[:21], recache[:21])
  # Deterministic runs, the same until the switch: what differs after it is the recache's doing (the old
  # frames' K/V under the new text change less than the text K/V themselves, here ~0.1 of 255 on average).
  assert (keep[21:] != recache[21:]).mean() > 0.01


def test_serial_loop_switches_the_same(runs):
  """--sync-stages (each stage waited for, the history pushed after them) writes the overlapped loop's frames."""
  args = ("--recache", "--prompt-at", f"15:{OTHER}")
  np.testing.assert_array_equal(runs("--sync-stages", *args)[0], runs(*args)[0])


def test_schedule_file_equals_prompt_at(runs, setup):  # noqa: F811
  """A --prompt-schedule file (a comment, a blank line, FRAME and TEXT separated by a tab) gives the frames of the
  same entry as --prompt-at, and its switch line names the file's line."""
  path = setup["root"] / "schedule.txt"
  path.write_text(f"# frame, then the instruction\n\n15\t{OTHER}\n")
  from_file, lines = runs("--prompt-schedule", str(path))
  np.testing.assert_array_equal(from_file, runs("--prompt-at", f"15:{OTHER}")[0])
  assert f"prompt switch before chunk 2 (input frame 21; {path}:3): {OTHER!r}, the KV cache kept" in lines


def test_switch_to_the_same_prompt(runs):
  """Without the mask cache, switching to --prompt itself with the KV cache kept rewrites the same text K/V: the
  frames are bit for bit the run's without a schedule. With the mask cache the chunk after the switch recomputes
  every token instead of reusing 70% of them from the previous chunk, so from there on the frames differ (the
  frames before it do not)."""
  np.testing.assert_array_equal(runs(*NO_MASK, "--prompt-at", f"9:{PROMPT}")[0], runs(*NO_MASK)[0])
  (masked, lines), (plain, _) = runs("--prompt-at", f"9:{PROMPT}"), runs()
  np.testing.assert_array_equal(masked[:9], plain[:9])
  assert not np.array_equal(masked[9:21], plain[9:21])
  assert next(line for line in lines if line.startswith("chunk 1:")).endswith("mask: all tokens")


@pytest.mark.parametrize("policy,cache_frames,executables", [((), "12", 8), (("--recache",), "15", 9)],
                         ids=["keep", "recache"])
def test_a_switch_compiles_nothing_while_streaming(setup, dit_dir, tmp_path, monkeypatch, capsys, policy,
                                                   cache_frames, executables):  # noqa: F811
  """Two switches (chunks 1 and 2) with the mask cache on: every executable, the switch (and with --recache the
  history's push) included, is compiled before streaming, as the compile line says (7 steps + the switch + the
  push), and none while streaming. A --cache-frames no other run in this process uses gives every program new
  shapes, so anything run outside the ahead-of-time executables would have to compile here."""
  counted = {}
  run_stream = stream.run_stream

  def counted_run_stream(*args, **kwargs):
    with cli.CompileTimer() as timer:
      run_stream(*args, **kwargs)
    counted["compiles"] = timer.count

  monkeypatch.setattr(stream, "run_stream", counted_run_stream)
  stream.main(schedule_args(setup, dit_dir, tmp_path / "out.rgb", "--cache-frames", cache_frames, *policy,
                            "--prompt-at", f"9:{OTHER}", "--prompt-at", f"21:{PROMPT}"))
  lines = capsys.readouterr().err.splitlines()
  assert counted == {"compiles": 0}
  switch = r"the prompt switch \(re-caching\)" if policy else "the prompt switch"
  # Of them, the VAE's four may have been compiled by an earlier run in this process (their shapes do not depend
  # on --cache-frames), so the count compiled now is not asserted.
  assert any(re.fullmatch(rf"compiling .* and {switch}: done in [\d.]+ s, \d+ of {executables} executables "
                          r"compiled", line) for line in lines)
  assert sum(line.startswith("prompt switch before") for line in lines) == 2
  # With the mask cache each chunk right after a switch (here chunks 1 and 2) recomputes every token.
  chunks = [line for line in lines if re.match(r"chunk \d+: frames", line)]
  assert "mask: all tokens" in chunks[1] and "mask: all tokens" in chunks[2]
  assert read_raw(tmp_path / "out.rgb").shape == (FRAMES, H, W, 3)


def test_iou_is_left_out_after_a_chunk_run_in_full(setup, dit_dir, tmp_path, capsys):  # noqa: F811
  """50 frames (chunks at 0, 9, 21, 33, 45), a switch at 21: chunk 2 runs in full, chunk 3 gives the fraction of
  tokens it recomputed but no IoU (its previous mask is the full chunk's, not a mask), chunk 4 both."""
  source = tmp_path / "long.rgb"
  np.concatenate([setup["frames"], setup["frames"]]).tofile(source)
  args = schedule_args(setup, dit_dir, tmp_path / "out.rgb", "--prompt-at", f"21:{OTHER}")
  args[args.index("--input") + 1] = str(source)
  stream.main(args)
  chunks = [line for line in capsys.readouterr().err.splitlines() if re.match(r"chunk \d+: frames", line)]
  assert len(chunks) == 5
  assert re.search(r"mask: \d+% tokens recomputed$", chunks[1])  # after chunk 0, which runs in full
  assert chunks[2].endswith("mask: all tokens")
  assert re.search(r"mask: \d+% tokens recomputed$", chunks[3])
  assert re.search(r"mask: \d+% tokens recomputed, IoU [\d.]+$", chunks[4])


def test_text_encoder_loads_once_and_the_cache_serves_every_prompt(setup, dit_dir, tmp_path, capsys):  # noqa: F811
  """With a schedule of two more prompts (one of them --prompt again) the text encoder is loaded once and embeds
  the two distinct prompts one by one, storing them in the prompt cache; a second run reads both from the cache,
  loads no encoder, and writes the same frames."""
  cache = tmp_path / "prompts"
  outputs = []
  for i in range(2):
    output = tmp_path / f"out{i}.rgb"
    stream.main(schedule_args(setup, dit_dir, output, "--prompt-cache", str(cache), "--prompt-at", f"9:{OTHER}",
                              "--prompt-at", f"21:{PROMPT}"))
    lines = capsys.readouterr().err.splitlines()
    loads = [line for line in lines if line.startswith("loading the default model's text encoder")]
    if i == 0:
      assert len(loads) == 2 and loads[1].startswith(loads[0].removesuffix(" ...") + ": done in ")  # one load
      assert f"embedding 2 prompts (stored in the cache {cache}) ..." in lines
    else:
      assert loads == [] and f"2 of 2 prompt embeddings read from the cache {cache}" in lines
    outputs.append(read_raw(output))
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert len(list(cache.rglob("*.npy"))) == 2


def _usage_error(setup, dit_dir, tmp_path, capsys, *extra):  # noqa: F811
  """The one line a usage error prints (exit status 2), the --help pointer left out."""
  with pytest.raises(SystemExit) as info:
    stream.main(schedule_args(setup, dit_dir, tmp_path / "out.rgb", *extra))
  assert info.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1
  return err[0].removeprefix("error: ").removesuffix(" (see python -m liveedit_jax.stream --help)")


# (extra arguments, the schedule file's text or None, the error with FILE for the file's path)
BAD = [
    (["--prompt-at", "green"], None, "--prompt-at 'green': expected FRAME:TEXT, e.g. 48:'make the circle green'"),
    (["--prompt-at=-3:go"], None,  # argparse takes a separate '-3:go' for an option
     "--prompt-at '-3:go': FRAME must be a non-negative integer (an input frame index), got '-3'"),
    (["--prompt-at", "4.5:go"], None,
     "--prompt-at '4.5:go': FRAME must be a non-negative integer (an input frame index), got '4.5'"),
    (["--prompt-at", "²:go"], None,  # a digit to str.isdigit, not to int()
     "--prompt-at '²:go': FRAME must be a non-negative integer (an input frame index), got '²'"),
    (["--prompt-at", ":go"], None,
     "--prompt-at ':go': FRAME must be a non-negative integer (an input frame index), got ''"),
    (["--prompt-at", "48:  "], None, "--prompt-at '48:  ': the prompt is empty"),
    (["--prompt-at", "9:a", "--prompt-at", "9:b"], None,
     "two prompts for frame 9: --prompt-at '9:a' and --prompt-at '9:b'"),
    (["--prompt-at", "9:a", "--prompt-schedule", "FILE"], "# x\n09 b\n",
     "two prompts for frame 9: --prompt-at '9:a' and FILE:2"),
    (["--prompt-schedule", "FILE"], "9 make it green\n\nsoon make it red\n",
     "FILE:3: FRAME must be a non-negative integer (an input frame index), got 'soon'"),
    (["--prompt-schedule", "FILE"], "9\n", "FILE:1: the prompt is empty"),
    (["--prompt-schedule", "FILE"], "# nothing yet\n\n", "--prompt-schedule FILE: no entries (expected lines of "
     "FRAME TEXT)"),
    (["--prompt-schedule", "FILE"], None, "--prompt-schedule FILE: cannot read it (No such file or directory)"),
    (["--context", "CONTEXT", "--prompt-at", "9:a"], None, "a prompt schedule (--prompt-at, --prompt-schedule) is "
     "embedded by the text encoder; it does not apply to --context"),
    (["--recache"], None, "--recache applies at a prompt switch: give --prompt-at or --prompt-schedule"),
    (["--recache", "--sink-frames", "3", "--prompt-at", "9:a"], None, "--recache rebuilds the KV cache at its "
     "frames' positions, which sink frames do not keep: it needs --sink-frames 0, got 3"),
]


@pytest.mark.parametrize("extra,text,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_schedules_are_one_line_usage_errors(setup, dit_dir, tmp_path, capsys, extra, text,
                                                 message):  # noqa: F811
  path = tmp_path / "schedule.txt"
  if text is not None:
    path.write_text(text)
  extra = [str(path) if a == "FILE" else setup["context"] if a == "CONTEXT" else a for a in extra]
  assert _usage_error(setup, dit_dir, tmp_path, capsys, *extra) == message.replace("FILE", str(path))


def test_help_says_when_a_prompt_takes_effect(capsys):
  with pytest.raises(SystemExit):
    stream.main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "first chunk boundary at or after input frame FRAME" in text
  assert "one FRAME TEXT per line" in text and "--recache" in text
