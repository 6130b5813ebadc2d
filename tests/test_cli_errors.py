"""The training, converter, benchmark, stream and evaluate CLIs turn user mistakes into one line on stderr with a
non-zero exit status (no traceback unless --debug or LIVEEDIT_DEBUG=1), and their --help shows the real defaults.

Each row runs the CLI's `main` through `liveedit_jax.cli.run`, the wrapper its `__main__` uses; a few rows also run
as `python -m ...` to prove that path. Every mistake fires before any model is built or trained.
"""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

# Imported here, not inside the tests: a first import's warnings would land in the stderr under test.
import convert.taehv  # noqa: F401
import convert.umt5  # noqa: F401
import convert.wan_dit  # noqa: F401
import convert.wan_vae  # noqa: F401
import liveedit_jax.bench.__main__  # noqa: F401
import liveedit_jax.bench.e2e  # noqa: F401
import liveedit_jax.bench.stream  # noqa: F401
import liveedit_jax.bench.vae  # noqa: F401
import liveedit_jax.evaluate  # noqa: F401
import liveedit_jax.serve  # noqa: F401
import liveedit_jax.stream  # noqa: F401
import liveedit_kernels.bench  # noqa: F401
import train.autoencoder
import train.loss_curves  # noqa: F401
import train.prepare_data  # noqa: F401
import train.recipe
import train.stage1  # noqa: F401
import train.stage2  # noqa: F401
import train.stage3  # noqa: F401
import train.text_encoder  # noqa: F401
from liveedit_jax import cli
from liveedit_jax.taehv import TAEHVConfig
from train.configs import TRAIN_PRESETS, TrainConfig

REPO = Path(__file__).resolve().parents[1]
USAGE, USER = 2, 1  # argparse's usage mistakes; the others (cli.run)

# The stream CLI up to its model checks (the default model's DiT, VAE and text encoder), compiling nothing.
STREAM = ["--input", "synthetic:0", "--output", "{tmp}/out.rgb", "--no-compile-cache"]
AUTOENCODER_WRITERS = "python -m convert.wan_vae or python -m convert.taehv"

# (cli, argv, exit status, substrings of the one stderr line). "{tmp}" is the workspace below.
ROWS = {
    # train.stage1/2/3 (train/cli.py)
    "stage1-unknown-preset": ("train.stage1", ["--config", "huge"], USAGE,
                              ["argument --config: invalid choice: 'huge'", "'tiny'"]),
    "stage2-not-an-int": ("train.stage2", ["--config", "tiny", "--steps", "many"], USAGE,
                          ["argument --steps: invalid int value: 'many'"]),
    "stage3-not-a-bool": ("train.stage3", ["--config", "tiny", "--remat", "maybe"], USAGE,
                          ["argument --remat: expected true or false, got 'maybe'"]),
    "stage3-not-numbers": ("train.stage3", ["--config", "tiny", "--timesteps", "1000,x"], USAGE,
                           ["argument --timesteps: expected comma-separated numbers, got '1000,x'"]),
    "stage3-frames-not-chunks": ("train.stage3", ["--config", "tiny", "--frames", "7"], USER,
                                 ["frames (7) must be a multiple of chunk_frames (3)"]),
    "stage1-missing-data-dir": ("train.stage1", ["--config", "tiny", "--data-dir", "{tmp}/absent"], USER,
                                ["--data-dir {tmp}/absent has no index.json", "python -m train.prepare_data"]),
    "stage2-missing-init": ("train.stage2", ["--config", "tiny", "--data-dir", "", "--init", "{tmp}/absent"], USER,
                            ["--init {tmp}/absent: no such directory (expected a converted dit model"]),
    # train.recipe
    "recipe-unknown-recipe": ("train.recipe", ["huge"], USAGE, ["argument recipe: invalid choice: 'huge'"]),
    "recipe-unknown-phase": ("train.recipe", ["synth", "--until", "stage4"], USAGE,
                             ["argument --until: invalid choice: 'stage4'"]),
    "recipe-package-before-training": ("train.recipe", ["tiny", "--workdir", "{tmp}/runs", "--package", "{tmp}/pkg"],
                                       USER, ["--package needs the finished phases text_encoder ({tmp}/runs/"
                                              "text_encoder)", "run `python -m train.recipe tiny --workdir "
                                              "{tmp}/runs` first"]),
    "recipe-autoencoder-unknown-field": ("train.recipe", ["tiny", "--workdir", "{tmp}/runs", "--autoencoder",
                                                          '{{"stepz": 3}}'], USER,
                                         ["--autoencoder: unknown AutoencoderConfig fields ['stepz']"]),
    # train.autoencoder
    "autoencoder-unknown-vae": ("train.autoencoder", ["--vae", "huge"], USER,
                                ["unknown VAE preset 'huge'", "'synth'"]),
    "autoencoder-vae-overrides-unknown": ("train.autoencoder", ["--vae-overrides", '{{"depth": 3}}'], USER,
                                          ["--vae-overrides: unknown VAEConfig fields ['depth'] in vae_overrides"]),
    "autoencoder-not-an-int": ("train.autoencoder", ["--steps", "1.5"], USAGE,
                               ["argument --steps: invalid int value: '1.5'"]),
    # train.prepare_data
    "prepare_data-missing-latents": ("train.prepare_data", ["--latents", "{tmp}/absent", "--out", "{tmp}/shards"],
                                     USER, ["--latents {tmp}/absent: no such file or directory"]),
    "prepare_data-out-exists": ("train.prepare_data", ["--synthetic", "2", "--out", "{tmp}/exists"], USER,
                                ["--out {tmp}/exists exists; remove it or choose another --out"]),
    "prepare_data-unknown-config": ("train.prepare_data", ["--synthetic", "2", "--config", "huge", "--out",
                                                           "{tmp}/shards"], USAGE,
                                    ["argument --config: invalid choice: 'huge'"]),
    "prepare_data-videos-without-encoders": ("train.prepare_data", ["--videos", "{tmp}/pairs.jsonl", "--out",
                                                                    "{tmp}/shards"], USAGE,
                                             ["--videos needs --vae and --text-encoder"]),
    # train.text_encoder
    "text_encoder-unknown-preset": ("train.text_encoder", ["--out", "{tmp}/te", "--preset", "huge"], USAGE,
                                    ["argument --preset: invalid choice: 'huge'"]),
    "text_encoder-out-exists": ("train.text_encoder", ["--out", "{tmp}/exists"], USER,
                                ["--out {tmp}/exists exists; pass --overwrite to replace it"]),
    # train.loss_curves
    "loss_curves-missing-logs": ("train.loss_curves", ["{tmp}/absent", "--out", "{tmp}/curves.png"], USER,
                                 ["{tmp}/absent: no such directory"]),
    "loss_curves-no-runs": ("train.loss_curves", ["{tmp}/exists", "--out", "{tmp}/curves.png"], USAGE,
                            ["{tmp}/exists holds no run directories"]),
    # convert.taehv
    "taehv-missing-src": ("convert.taehv", ["--src", "{tmp}/absent.pth", "--dst", "{tmp}/out"], USER,
                          ["{tmp}/absent.pth: no such file or directory"]),
    "taehv-wrong-keys": ("convert.taehv", ["--src", "{tmp}/taehv.safetensors", "--dst", "{tmp}/out", "--preset",
                                           "tiny"], USER,
                         ["{tmp}/taehv.safetensors: cannot convert, ",
                          " problem(s): wrong shape for encoder.0.weight: expected (8, 3, 3, 3), found (2, 3, 3, 3); "
                          "missing key encoder.0.bias (expected shape (8,));", "; unexpected key stray (shape (2,))"]),
    "taehv-dst-exists": ("convert.taehv", ["--src", "{tmp}/taehv.safetensors", "--dst", "{tmp}/exists"], USER,
                         ["{tmp}/exists exists; pass --overwrite to replace it"]),
    "taehv-unknown-preset": ("convert.taehv", ["--src", "{tmp}/taehv.safetensors", "--dst", "{tmp}/out", "--preset",
                                               "huge"], USAGE, ["argument --preset: invalid choice: 'huge'"]),
    # convert.wan_vae
    "wan_vae-wrong-shape": ("convert.wan_vae", ["--src", "{tmp}/vae.safetensors", "--dst", "{tmp}/out", "--preset",
                                                "tiny"], USER,
                            ["wrong shape for encoder.conv1.weight: expected (8, 3, 3, 3, 3), found (2, 3, 3, 3, 3)",
                             "; missing key encoder.conv1.bias (expected shape (8,))"]),
    "wan_vae-dst-exists": ("convert.wan_vae", ["--src", "{tmp}/vae.safetensors", "--dst", "{tmp}/exists"], USER,
                           ["{tmp}/exists exists; pass --overwrite to replace it"]),
    "wan_vae-bad-dtype": ("convert.wan_vae", ["--src", "{tmp}/vae.safetensors", "--dst", "{tmp}/out", "--dtype",
                                              "float16"], USAGE, ["argument --dtype: invalid choice: 'float16'"]),
    # convert.wan_dit
    "wan_dit-missing-src": ("convert.wan_dit", ["--src", "{tmp}/absent.pth", "--dst", "{tmp}/out"], USER,
                            ["{tmp}/absent.pth: no such file or directory"]),
    "wan_dit-wrong-keys": ("convert.wan_dit", ["--src", "{tmp}/dit.safetensors", "--dst", "{tmp}/out"], USER,
                           ["{tmp}/dit.safetensors: missing key blocks.0.ffn.0.weight, needed to read the model's "
                            "widths"]),
    "wan_dit-unknown-format": ("convert.wan_dit", ["--src", "{tmp}/dit.safetensors", "--dst", "{tmp}/out",
                                                   "--format", "onnx"], USAGE,
                               ["argument --format: invalid choice: 'onnx'"]),
    # python -m liveedit_jax.bench NAME ..., python -m liveedit_kernels.bench
    "bench-unknown-name": ("liveedit_jax.bench.__main__", ["fastest"], USAGE,
                           ["argument name: invalid choice: 'fastest'", "'stream'"]),
    "bench-no-name": ("liveedit_jax.bench.__main__", [], USAGE, ["the following arguments are required: name"]),
    "bench-vae-bad-dtype": ("liveedit_jax.bench.__main__", ["vae", "--dtype", "fp8"], USAGE,
                            ["argument --dtype: invalid choice: 'fp8'", "python -m liveedit_jax.bench vae --help"]),
    "bench-stream-not-an-int": ("liveedit_jax.bench.stream", ["--height", "tall"], USAGE,
                                ["argument --height: invalid int value: 'tall'"]),
    "kernels-bench-not-an-int": ("liveedit_kernels.bench", ["--iters", "many"], USAGE,
                                 ["argument --iters: invalid int value: 'many'"]),
    "bench-e2e-unknown-decoder-preset": ("liveedit_jax.bench.e2e", ["--decoder-preset", "huge"], USAGE,
                                         ["argument --decoder-preset: invalid choice: 'huge'", "'taew2_1'"]),
    # liveedit_jax.stream and liveedit_jax.evaluate: --vae and --decoder take a Wan VAE or a TAEHV directory
    "stream-decoder-of-another-kind": ("liveedit_jax.stream", [*STREAM, "--decoder", "{tmp}/dit_only"], USER,
                                       ['{tmp}/dit_only/config.json: "kind" is \'dit\', expected \'vae\' or '
                                        f"'taehv' (a model written by {AUTOENCODER_WRITERS})"]),
    "stream-decoder-missing": ("liveedit_jax.stream", [*STREAM, "--decoder", "{tmp}/absent"], USER,
                               ["{tmp}/absent: no such directory (expected a converted vae or taehv model, written by "
                                f"{AUTOENCODER_WRITERS})"]),
    "stream-decoder-other-latents": ("liveedit_jax.stream", [*STREAM, "--decoder", "{tmp}/taehv_z12"], USER,
                                     ["{tmp}/taehv_z12: the TAEHV decoder's latent channels 12 differs from the VAE "
                                      "encoder's 16 (the default model's vae ("]),
    "stream-more-devices-than-present": ("liveedit_jax.stream", [*STREAM, "--devices", "16"], USAGE,
                                         ["--devices 16: JAX sees 1 cpu device here"]),
    "stream-vae-of-another-kind": ("liveedit_jax.stream", [*STREAM, "--vae", "{tmp}/dit_only"], USER,
                                   ['{tmp}/dit_only/config.json: "kind" is \'dit\', expected \'vae\' or \'taehv\'']),
    "evaluate-decoder-of-another-kind": ("liveedit_jax.evaluate", ["--editor", "stream", "--clips", "1", "--decoder",
                                                                   "{tmp}/dit_only"], USER,
                                         ['{tmp}/dit_only/config.json: "kind" is \'dit\', expected \'vae\' or '
                                          "'taehv'"]),
    # liveedit_jax.serve: its mistakes fire before a model loads or the server listens
    "serve-bad-port": ("liveedit_jax.serve", ["--port", "70000"], USAGE, ["--port must be in 1..65535, got 70000"]),
    "serve-size-not-multiple": ("liveedit_jax.serve", ["--height", "100", "--no-compile-cache"], USER,
                                ["--height 100 and --width 128 must be positive multiples of 16"]),
    "serve-vae-of-another-kind": ("liveedit_jax.serve", ["--vae", "{tmp}/dit_only", "--no-compile-cache"], USER,
                                  ['{tmp}/dit_only/config.json: "kind" is \'dit\', expected \'vae\' or \'taehv\'']),
    # convert.umt5
    "umt5-not-umt5": ("convert.umt5", ["--src", "{tmp}/vae.safetensors", "--dst", "{tmp}/out"], USER,
                      ["{tmp}/vae.safetensors: not a umT5 encoder checkpoint",
                       "(first keys: ['encoder.conv1.weight'])"]),
    "umt5-no-tokenizer": ("convert.umt5", ["--src", "{tmp}/umt5.safetensors", "--dst", "{tmp}/out", "--preset",
                                           "tiny"], USER,
                          ["{tmp}/umt5.safetensors: no tokenizer", "pass --tokenizer DIR"]),
    "umt5-dst-exists": ("convert.umt5", ["--src", "{tmp}/umt5.safetensors", "--dst", "{tmp}/exists"], USER,
                        ["{tmp}/exists exists; pass --overwrite to replace it"]),
}
# Rows that also run as `python -m <cli>`: one per family, and the converters' multi-line key report.
SUBPROCESS_ROWS = ("stage1-missing-data-dir", "prepare_data-out-exists", "taehv-wrong-keys", "wan_dit-wrong-keys",
                   "bench-unknown-name", "stream-decoder-of-another-kind", "serve-bad-port")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
  """The files the rows name: an existing directory, a manifest, and checkpoints with the wrong keys or shapes."""
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  (tmp_path / "exists").mkdir()
  # Converted-model directories with a config and no weights (the checks read no weights).
  for name, kind, config in (("dit_only", "dit", {}),
                             ("taehv_z12", "taehv", TAEHVConfig(latent_channels=12).to_dict())):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps({"kind": kind, "config": config}))
  (tmp_path / "pairs.jsonl").write_text('{"source": "a.mp4", "target": "b.mp4", "prompt": "make it red"}\n')
  zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
  save_file({"encoder.0.weight": zeros(2, 3, 3, 3), "stray": zeros(2)}, str(tmp_path / "taehv.safetensors"))
  save_file({"encoder.conv1.weight": zeros(2, 3, 3, 3, 3)}, str(tmp_path / "vae.safetensors"))
  save_file({"patch_embedding.weight": zeros(8, 16, 1, 2, 2)}, str(tmp_path / "dit.safetensors"))
  save_file({"token_embedding.weight": zeros(8, 4)}, str(tmp_path / "umt5.safetensors"))
  return tmp_path


def _row(name: str, tmp: Path) -> tuple[str, list[str], int, list[str]]:
  module, argv, code, expected = ROWS[name]
  return module, [a.format(tmp=tmp) for a in argv], code, [e.format(tmp=tmp) for e in expected]


def _assert_one_line(err: str, expected: list[str]) -> None:
  assert "Traceback" not in err, err
  assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
  for text in expected:
    assert text in err, (text, err)


def _run_in_process(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
  main = importlib.import_module(module).main
  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, argv)
  code = exit_info.value.code
  if isinstance(code, str):
    # The converters end their checked errors with SystemExit("error: ...") (their callers rely on it), which
    # cli.run passes on; the interpreter then prints the message to stderr and exits 1, as the `python -m` rows
    # (SUBPROCESS_ROWS) check for real.
    print(code, file=sys.stderr)
    code = 1
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize("name", list(ROWS))
def test_mistake_is_one_line(name, workspace, capsys):
  module, argv, code, expected = _row(name, workspace)
  status, _, err = _run_in_process(module, argv, capsys)
  assert status == code, err
  _assert_one_line(err, expected)
  assert not (workspace / "out").exists() and not (workspace / "shards").exists()  # nothing half-written


@pytest.mark.parametrize("name", SUBPROCESS_ROWS)
def test_python_m_path(name, workspace):
  module, argv, code, expected = _row(name, workspace)
  result = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=_env())
  assert result.returncode == code, result.stderr
  _assert_one_line(result.stderr, expected)


def _env() -> dict[str, str]:
  return {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}


def test_debug_shows_the_traceback(workspace, capsys, monkeypatch):
  # A converter ends its checked errors with SystemExit; under --debug (argv of `python -m`) it re-raises instead.
  module, argv, code, _ = _row("taehv-wrong-keys", workspace)
  result = subprocess.run([sys.executable, "-m", module, *argv, "--debug"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=_env())
  assert result.returncode == code and result.stderr.startswith("Traceback")
  assert "CheckpointError" in result.stderr and "\n  unexpected key stray (shape (2,))" in result.stderr
  # The other CLIs' errors reach cli.run, which honours LIVEEDIT_DEBUG in-process too.
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  module, argv, code, _ = _row("stage1-missing-data-dir", workspace)
  status, _, err = _run_in_process(module, argv, capsys)
  assert status == code and err.startswith("Traceback") and "UserError: --data-dir" in err


def _help_default(text: str, option: str) -> str:
  """The "(default: X)" of `option`'s entry in a --help text (argparse wraps it over lines)."""
  entry = re.search(rf"^  {re.escape(option)}\b(.*?)(?=^  -|\Z)", text, re.M | re.S)
  assert entry, f"{option} not in the help"
  found = re.search(r"\(default: (.*?)\)$", " ".join(entry.group(1).split()))
  assert found, f"{option} shows no default: {entry.group(1)!r}"
  return found.group(1)


def _stage_defaults(stage: int, field: str) -> str:
  """Each preset's value, as typed on the command line (booleans as true/false)."""
  values = [(name, getattr(stages[stage], field)) for name, stages in sorted(TRAIN_PRESETS.items())]
  return ", ".join(f"{name}={str(v).lower() if isinstance(v, bool) else v}" for name, v in values)


# (cli, option, the default its help must show; None: argparse's own default for the option)
HELP_ROWS = {
    "stage1-steps-per-preset": ("train.stage1", "--steps", _stage_defaults(1, "steps")),
    "stage2-workdir-per-preset": ("train.stage2", "--workdir", _stage_defaults(2, "workdir")),
    "stage3-shared-timesteps": ("train.stage3", "--timesteps", ",".join(map(str, TrainConfig().timesteps))),
    "stage3-remat-per-preset": ("train.stage3", "--remat", _stage_defaults(3, "remat")),
    "recipe-until": ("train.recipe", "--until", train.recipe.PHASES[-1]),
    "autoencoder-frames": ("train.autoencoder", "--frames", str(train.autoencoder.AutoencoderConfig().frames)),
    "autoencoder-zero-seed": ("train.autoencoder", "--seed", str(train.autoencoder.AutoencoderConfig().seed)),
    "prepare_data-shard-size": ("train.prepare_data", "--shard-size", None),
    "prepare_data-zero-workers": ("train.prepare_data", "--workers", None),
    "text_encoder-preset": ("train.text_encoder", "--preset", None),
    "loss_curves-out": ("train.loss_curves", "--out", None),
    "taehv-preset": ("convert.taehv", "--preset", None),
    "umt5-dtype": ("convert.umt5", "--dtype", None),
    "wan_vae-format": ("convert.wan_vae", "--format", None),
    "wan_dit-dtype": ("convert.wan_dit", "--dtype", None),
}


@pytest.mark.parametrize("name", list(HELP_ROWS))
def test_help_shows_the_real_default(name, capsys, monkeypatch):
  module, option, want = HELP_ROWS[name]
  parsers = []
  parse_args = cli.ArgumentParser.parse_args

  def recording(self, *args, **kwargs):  # keeps the parser that main builds, to read its defaults
    parsers.append(self)
    return parse_args(self, *args, **kwargs)

  monkeypatch.setattr(cli.ArgumentParser, "parse_args", recording)
  status, out, _ = _run_in_process(module, ["--help"], capsys)
  assert status == 0 and out.startswith(f"usage: python -m {module}")
  if want is None:
    action = next(a for a in parsers[-1]._actions if option in a.option_strings)
    want = str(action.default)
  assert want not in ("None", "False", "")
  assert _help_default(out, option) == want
