"""The default model: where it is found (package path, LIVEEDIT_DEFAULT_MODEL, DEFAULT_DIR), its sha256 check,
its parts mixed with converted ones, and the stream and evaluate CLIs running on it with no model options
(synthetic:SEED input, --side-by-side, the unknown-word warning).

The fake default is tests/test_synthetic_data.py's `write_tiny_models` (the tiny DiT, the 4× VAE and a tiny umT5
with tests/test_umt5_tokenizer.py's sentencepiece model, all safetensors) plus a recipe.json with their sha256s
and a native size of 9 frames of 32×48: one stream chunk, so the runs here share one set of compiles.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import liveedit_jax
from liveedit_jax import cli, default_model, evaluate, stream, synthetic, video_io
from liveedit_jax.tokenizer import Tokenizer
from liveedit_jax.umt5 import KIND as UMT5_KIND
from liveedit_jax.umt5 import TOKENIZER_DIR
from tests.test_stream_cli import DIT
from tests.test_synthetic_data import VAE, write_tiny_models
from tests.test_umt5 import TINY as UMT5_TINY

pytestmark = pytest.mark.filterwarnings("ignore:prompt 0 has:UserWarning")  # the test tokenizer splits words finely

NATIVE = {"frames": 9, "height": 32, "width": 48, "fps": 16}
PACKAGE_RESTORE = ("restore it with `git checkout -- liveedit_jax/models/synth` in a clone of the repository, "
                   "`pip install --force-reinstall liveedit-jax` for an installed package, or rebuild it with "
                   "`python -m train.recipe --package liveedit_jax/models/synth`")


def write_recipe(root: Path) -> dict:
  files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for part in default_model.PARTS for p in sorted((root / part).rglob("*")) if p.is_file()}
  recipe = {**NATIVE, "sources": {part: f"runs/test/{part}" for part in default_model.PARTS}, "files": files}
  (root / "recipe.json").write_text(json.dumps(recipe))
  return recipe


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  root = tmp_path_factory.mktemp("default_model")
  write_tiny_models(root)
  write_recipe(root)
  return root


@pytest.fixture
def env(fake, monkeypatch):
  monkeypatch.setenv(default_model.ENV, str(fake))
  return fake


def damaged_copy(fake, tmp_path) -> Path:
  """A copy of the fake default whose DiT weights have one byte flipped."""
  copy = tmp_path / "copy"
  shutil.copytree(fake, copy)
  weights = copy / "dit" / "params.safetensors"
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 0x40
  weights.write_bytes(bytes(data))
  return copy


def one_error_line(main, argv, capsys) -> str:
  """Runs `main` under cli.run; asserts exit status 1 and a single stderr line, and returns it."""
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, argv)
  lines = capsys.readouterr().err.splitlines()
  assert exit_info.value.code == 1 and len(lines) == 1, lines
  assert lines[0].startswith("error: ")
  return lines[0]


def test_where_the_default_is(fake, monkeypatch, capsys):
  """The package's models/synth unless LIVEEDIT_DEFAULT_MODEL (or a patched DEFAULT_DIR) says otherwise; parts
  left out resolve to it, and the stream CLI's sizes and help follow its recipe."""
  monkeypatch.delenv(default_model.ENV, raising=False)
  package = Path(liveedit_jax.__file__).resolve().parent / "models" / "synth"
  assert default_model.directory() == default_model.DEFAULT_DIR == package
  assert default_model.paths() == {p: package / p for p in ("dit", "vae", "text_encoder")}
  assert default_model.label("dit") == "the default model's dit (liveedit_jax/models/synth/dit)"

  monkeypatch.setenv(default_model.ENV, str(fake))
  assert default_model.directory() == fake and default_model.paths()["vae"] == fake / "vae"
  assert default_model.native() == default_model.Native(frames=9, height=32, width=48, fps=16.0)
  default_model.check()
  dirs = default_model.resolve(None, "my/vae", None)
  assert dirs == default_model.ModelDirs(str(fake / "dit"), "my/vae", str(fake / "text_encoder"),
                                         ("dit", "text_encoder"))
  assert dirs.label("vae") == "my/vae" and dirs.label("dit") == f"the default model's dit ({fake / 'dit'})"
  assert default_model.resolve("a", "b", None, text=False) == default_model.ModelDirs("a", "b", None, ())

  monkeypatch.delenv(default_model.ENV)
  monkeypatch.setattr(default_model, "DEFAULT_DIR", fake)
  assert default_model.directory() == fake and default_model.native().width == 48
  assert default_model.label("vae") == "the default model's vae (liveedit_jax/models/synth/vae)"

  base = ["--input", "synthetic:0", "--output", "out.rgb"]
  args = stream.parse_args(base)
  assert (args.height, args.width, args.fps) == (32, 48, 16.0) and args.models.defaults == default_model.PARTS
  args = stream.parse_args([*base, "--dit", "my/dit", "--context", "c.npy", "--width", "64"])
  assert (args.height, args.width, args.fps) == (480, 64, 16.0)
  assert args.models == default_model.ModelDirs("my/dit", str(fake / "vae"), None, ("vae",))
  args = evaluate.parse_args(["--editor", "stream"])
  assert (args.frames, args.height, args.width) == (9, 32, 48)
  args = evaluate.parse_args(["--editor", "sampler", "--dit", "my/dit", "--height", "64"])
  assert (args.frames, args.height, args.width) == (33, 64, 128)
  assert evaluate.parse_args(["--editor", "source"]).models is None

  with pytest.raises(SystemExit):
    stream.parse_args(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "a multiple of 16 (default: 32, the default model's native size, without --dit; 480 with --dit)" in text
  assert "TAEHV (python -m convert.taehv) directory, told apart by its config.json; a TAEHV encoder's output runs 3 " \
      "frames behind its input (default: the default model's, liveedit_jax/models/synth/vae)" in text


def test_damaged_or_missing_files_are_one_line(fake, tmp_path, monkeypatch, capsys):
  """A flipped byte or a missing file of a part in use: exit 1, one line naming the file and how to restore it;
  a damaged part that an option replaces is not read."""
  copy = damaged_copy(fake, tmp_path)
  monkeypatch.setenv(default_model.ENV, str(copy))
  restore = (f"LIVEEDIT_DEFAULT_MODEL points to {copy}: rebuild it with `python -m train.recipe --package {copy}`, "
             f"or unset LIVEEDIT_DEFAULT_MODEL to use the package's own")
  damaged = re.compile(rf"error: {re.escape(str(copy / 'dit' / 'params.safetensors'))}: the default model's file is "
                       rf"damaged \(sha256 [0-9a-f]{{12}}…, recipe.json lists [0-9a-f]{{12}}…\); {re.escape(restore)}$")
  output = tmp_path / "out.rgb"
  assert damaged.match(one_error_line(stream.main, ["--input", "synthetic:0", "--output", str(output)], capsys))
  assert damaged.match(one_error_line(evaluate.main, ["--editor", "stream"], capsys))
  assert not output.exists()
  default_model.resolve(str(fake / "dit"), None, None)  # the damaged DiT is not the one in use

  (copy / "vae" / "config.json").unlink()
  line = one_error_line(evaluate.main, ["--editor", "sampler", "--dit", str(fake / "dit")], capsys)
  assert line == f"error: {copy / 'vae' / 'config.json'}: the default model's file is missing; {restore}"

  # The package's default: named as in a checkout, with the three ways to restore it.
  monkeypatch.delenv(default_model.ENV)
  monkeypatch.setattr(default_model, "DEFAULT_DIR", copy)
  (copy / "text_encoder" / TOKENIZER_DIR / "spiece.model").unlink()
  line = one_error_line(stream.main, ["--input", "synthetic:0", "--output", str(output), "--dit", str(fake / "dit"),
                                      "--vae", str(fake / "vae")], capsys)
  assert line == ("error: liveedit_jax/models/synth/text_encoder/tokenizer/spiece.model: the default model's file "
                  f"is missing; {PACKAGE_RESTORE}")
  (copy / "recipe.json").unlink()
  line = one_error_line(stream.main, ["--input", "synthetic:0", "--output", str(output)], capsys)
  assert line == f"error: liveedit_jax/models/synth/recipe.json: the default model is missing (no recipe.json); " \
                 f"{PACKAGE_RESTORE}"


def test_damaged_default_in_a_real_process_has_no_traceback(fake, tmp_path):
  copy = damaged_copy(fake, tmp_path)
  result = subprocess.run([sys.executable, "-m", "liveedit_jax.stream", "--input", "synthetic:0", "--output",
                           str(tmp_path / "out.rgb")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, default_model.ENV: str(copy)})
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {copy / 'dit' / 'params.safetensors'}: the default "
                                                 f"model's file is damaged"), lines


def write_config_dir(path, kind, config):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"kind": kind, "config": config}))
  return str(path)


def test_mixed_parts_that_do_not_fit_name_both(env, tmp_path, monkeypatch, capsys):
  """A converted part that does not fit the default's: one line naming the given directory and the default's."""
  wide = write_config_dir(tmp_path / "umt5_wide", UMT5_KIND, {**UMT5_TINY.replace(dim=48).to_dict(),
                                                               "fingerprint": "x"})
  vae8 = write_config_dir(tmp_path / "vae_z8", "vae", VAE.replace(z_dim=8, latents_mean=(0.0,) * 8,
                                                                  latents_std=(1.0,) * 8).to_dict())
  dit_p4 = write_config_dir(tmp_path / "dit_p4", "dit", dataclasses.asdict(DIT.replace(patch_size=(1, 4, 4))))
  base = ["--input", "synthetic:0", "--output", str(tmp_path / "out.rgb")]
  line = one_error_line(stream.main, [*base, "--text-encoder", wide], capsys)
  assert line == (f"error: {wide}: text encoder width 48 differs from the DiT's text_dim 40 (the default model's "
                  f"dit ({env / 'dit'}))")
  line = one_error_line(evaluate.main, ["--editor", "stream", "--text-encoder", wide], capsys)
  assert line == (f"error: {wide}: text encoder width 48 differs from the DiT's text_dim 40 (the default model's "
                  f"dit ({env / 'dit'}))")
  line = one_error_line(stream.main, [*base, "--dit", dit_p4, "--height", "40", "--width", "48"], capsys)
  assert line == (f"error: --height 40 and --width 48 must be positive multiples of 16 and 16: the VAE (the "
                  f"default model's vae ({env / 'vae'})) downsamples by 4 and the DiT's patch ({dit_p4}) is 4×4 "
                  f"latents")
  monkeypatch.delenv(default_model.ENV)
  monkeypatch.setattr(default_model, "DEFAULT_DIR", env)
  line = one_error_line(stream.main, [*base, "--vae", vae8], capsys)
  assert line == (f"error: {vae8}: VAE z_dim 8 differs from the DiT's latent_channels 16 (in_channels 32 / 2) of "
                  f"the default model's dit (liveedit_jax/models/synth/dit)")


def test_synthetic_reader():
  """synthetic:SEED[:FRAMES] reads make_example's test source chunk by chunk, as a FrameReader does."""
  rng = np.random.default_rng()
  seed = int(rng.integers(0, 1000))
  want = synthetic.make_example("test", seed, frames=33, height=32, width=48)
  with video_io.open_reader(f"synthetic:{seed}", 48, 32, 16) as reader:
    chunks = [reader.read(9), reader.read(12), reader.read(12), reader.read(12)]
    assert reader.frames_read == 33 and reader.name == f"synthetic:{seed}"
    assert reader.example.instruction == want.instruction
  assert [len(c) for c in chunks] == [9, 12, 12, 0]
  np.testing.assert_array_equal(np.concatenate(chunks), want.source)
  assert video_io.count_frames(f"synthetic:{seed}:5", 48, 32, 16) == 5
  with video_io.open_reader(f"synthetic:{seed}:5", 48, 32, 16) as reader:
    np.testing.assert_array_equal(reader.read(100), synthetic.make_example("test", seed, frames=5, height=32,
                                                                           width=48).source)
  with pytest.raises(ValueError, match=r"bad input 'synthetic:x': expected synthetic:SEED or synthetic:SEED:FRAMES"):
    video_io.open_reader("synthetic:x", 48, 32, 16)
  with pytest.raises(ValueError, match=r"--input-size applies to raw rgb24 input"):
    video_io.open_reader("synthetic:1", 48, 32, 16, (48, 32))


def read_raw(path, width) -> np.ndarray:
  return np.fromfile(path, np.uint8).reshape(-1, NATIVE["height"], width, 3)


@pytest.mark.filterwarnings("ignore:the prompt's words")  # the test tokenizer lacks some instructions' letters
def test_stream_synthetic_side_by_side(env, tmp_path, capsys):
  """No model options and no --prompt: the default model edits synthetic:SEED with the example's instruction;
  --side-by-side writes source | edit, the left half the input and the right half the plain run's output."""
  seed = int(np.random.default_rng().integers(0, 1000))
  example = synthetic.make_example("test", seed, frames=9, height=32, width=48)
  stream.main(["--input", f"synthetic:{seed}:9", "--output", str(tmp_path / "sbs.rgb"), "--side-by-side"])
  err = capsys.readouterr().err
  assert f"prompt: {example.instruction!r}, the instruction of synthetic:{seed}:9 (--prompt replaces it)" in err
  assert "loading the default model's DiT from" in err and "at 48×32, 16 fps" in err
  stream.main(["--input", f"synthetic:{seed}:9", "--output", str(tmp_path / "plain.rgb"), "--prompt",
               example.instruction])
  sbs, plain = read_raw(tmp_path / "sbs.rgb", 96), read_raw(tmp_path / "plain.rgb", 48)
  assert sbs.shape == (9, 32, 96, 3)
  np.testing.assert_array_equal(sbs[:, :, :48], example.source)
  np.testing.assert_array_equal(sbs[:, :, 48:], plain)
  assert plain.std() > 5 and not np.array_equal(plain, example.source)


def test_unknown_words(env, tmp_path):
  """Words the tokenizer maps to <unk> are named once each, through either backend; the CLI warns about them."""
  prompt = "make the  snowy circle blue, snowy"  # 'w', 'y' and 'b' are outside the test tokenizer's characters
  spiece = Tokenizer(env / "text_encoder" / TOKENIZER_DIR)
  hf = Tokenizer(env / "tokenizer")  # tokenizer.json beside spiece.model
  assert (spiece.backend, hf.backend) == ("sentencepiece", "tokenizers")
  for tokenizer in (spiece, hf):
    assert stream.unknown_words(tokenizer, prompt) == ["snowy", "blue,"]
    assert stream.unknown_words(tokenizer, "make the red circle dotted") == []
  with pytest.warns(UserWarning, match=r"the prompt's words 'snowy', 'blue,' are not in the vocabulary of the text "
                                       r"encoder \(the default model's text_encoder \(.*\)\): each reads as <unk>"):
    stream.main(["--input", "synthetic:3:9", "--output", str(tmp_path / "out.rgb"), "--prompt", prompt])
  assert read_raw(tmp_path / "out.rgb", 48).shape == (9, 32, 48, 3)


def test_evaluate_on_the_default(env, tmp_path):
  """--editor stream with no model options scores the default model at its native size, the same numbers as
  with its directories given."""
  result = evaluate.main(["--editor", "stream", "--split", "val", "--clips", "1", "--json", str(tmp_path / "a.json")])
  config = json.loads((tmp_path / "a.json").read_text())["config"]
  assert (config["frames"], config["height"], config["width"]) == (9, 32, 48)
  assert config["default_parts"] == ["dit", "vae", "text_encoder"] and config["dit"] == str(env / "dit")
  given = evaluate.main(["--editor", "stream", "--split", "val", "--clips", "1", "--dit", str(env / "dit"), "--vae",
                         str(env / "vae"), "--text-encoder", str(env / "text_encoder"), *sum(
                             ([f"--{k}", str(NATIVE[k])] for k in ("frames", "height", "width")), [])])
  timing = ("time_s", "first_frame_s", "fps")
  strip = lambda record: {k: v for k, v in record.items() if k not in timing}  # noqa: E731
  assert strip(result["records"][0]) == strip(given["records"][0])
  assert result["records"][0]["frames"] == 9 and result["records"][0]["psnr"] < 60  # edited, not a copy
