"""`python -m train.prepare_data --synthetic-edits`: shards of benchmark clips through a VAE and a text encoder.

Tiny random model directories (`write_tiny_models`, shared with tests/test_evaluate.py): tests/test_stream_cli.py's
DiT config, VAE at 4× (below) and `random_vae_params`, and a umT5 with tests/test_umt5_tokenizer.py's sentencepiece model and
tests/test_umt5.py's random weights. Clips of 9 frames at 32×48.
"""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from liveedit_jax import param_io, synthetic
from liveedit_jax.dit import init_dit_params
from liveedit_jax.umt5 import KIND as UMT5_KIND
from liveedit_jax.umt5 import TOKENIZER_DIR, encode_prompts, load_text_encoder
from liveedit_jax.vae import load_vae, vae_encode
from liveedit_jax.video_io import to_float
from tests.test_stream_cli import DIT, random_vae_params
from tests.test_stream_cli import VAE as VAE8
from tests.test_umt5 import TINY as UMT5_TINY
from tests.test_umt5 import random_params as random_umt5_params
from tests.test_umt5_tokenizer import write_tokenizer
from train import prepare_data
from train.shards import LatentShards
from train.synthetic_data import read_edits

pytestmark = pytest.mark.filterwarnings("ignore:prompt 0 has:UserWarning")  # the test tokenizer splits words finely

FRAMES, H, W = 9, 32, 48
# 4× space and time like the synth VAE: two stages compile faster than the tiny preset's three, and its tokens of
# 4 × 2 = 8 pixels differ from metrics.token_mask's default 16, so a test sees whether the geometry is passed.
VAE = VAE8.replace(dim_mult=(1, 2, 2), temporal_downsample=(True, True))


def write_tiny_models(root, seed=0, dit=True):
  """Converted-style directories {"dit", "vae", "text_encoder"} of random tiny models under `root` (without the
  DiT when `dit` is False)."""
  rng = np.random.default_rng(seed)
  # One safetensors file each: faster to write and read than an Orbax checkpoint.
  param_io.save_params(root / "vae", "vae", VAE.to_dict(), random_vae_params(VAE, rng), safetensors=True)
  tokenizer = write_tokenizer(root / "tokenizer")
  param_io.save_params(root / "text_encoder", UMT5_KIND, {**UMT5_TINY.to_dict(), "fingerprint": f"test-{seed}"},
                       random_umt5_params(UMT5_TINY, seed),
                       files={f"{TOKENIZER_DIR}/spiece.model": tokenizer / "spiece.model"}, safetensors=True)
  dirs = {name: str(root / name) for name in ("vae", "text_encoder")}
  if not dit:
    return dirs
  dit_params = init_dit_params(DIT, jax.random.key(seed))
  # The head is zero-initialised; random weights make the output depend on the whole network.
  dit_params["head"]["proj"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1),
                                                                 dit_params["head"]["proj"]["kernel"].shape)
  param_io.save_params(root / "dit", "dit", dataclasses.asdict(DIT), dit_params, safetensors=True)
  return {"dit": str(root / "dit"), **dirs}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return write_tiny_models(tmp_path_factory.mktemp("synthetic_data_models"), seed=1, dit=False)


def argv(models, out, *extra):
  return ["--synthetic-edits", "3", "--split", "val", "--seed", "5", "--frames", str(FRAMES), "--height", str(H),
          "--width", str(W), "--vae", models["vae"], "--text-encoder", models["text_encoder"], "--out", str(out),
          *extra]


def test_shards_hold_encoded_benchmark_clips(models, tmp_path, capsys):
  """3 clips (val 5, 6, 7) in shards of 2: counts and shapes, latents = vae_encode of make_example's source and
  target (float32 storage: exactly), contexts = encode_prompts of its instruction, and edits.jsonl."""
  out = tmp_path / "shards"
  prepare_data.main(argv(models, out, "--shard-size", "2", "--dtype", "float32"))
  printed = json.loads(capsys.readouterr().out)
  assert printed["count"] == 3 and printed["source"] == [3, 8, 12, 16]
  shards = LatentShards(out)
  index = json.loads((out / "index.json").read_text())
  assert len(shards) == 3 and [s["count"] for s in index["shards"]] == [2, 1]
  assert shards.latent_shape == (1 + (FRAMES - 1) // 4, H // 4, W // 4, 16) and shards.context_shape == (16, 40)

  vae_config, vae_params = load_vae(models["vae"])
  encoder = load_text_encoder(models["text_encoder"])
  encode = jax.jit(vae_encode, static_argnums=0)
  records = read_edits(out)
  assert len(records) == 3
  for i in range(3):
    example = synthetic.make_example("val", 5 + i, frames=FRAMES, height=H, width=W)
    stored = shards[i]
    for field, frames in (("source", example.source), ("target", example.target)):
      want = np.asarray(encode(vae_config, vae_params, to_float(frames)[None]))[0]
      np.testing.assert_array_equal(stored[field], want, err_msg=f"example {i} {field}")
    np.testing.assert_array_equal(stored["context"], np.asarray(encode_prompts(encoder, [example.instruction]))[0])
    assert records[i] == {"example": i, "split": "val", "index": 5 + i, "seed": example.seed,
                          "instruction": example.instruction, "edit": dataclasses.asdict(example.edit),
                          "frames": FRAMES, "height": H, "width": W}
  # Distinct clips, and the source and target of an edited clip differ.
  assert not np.array_equal(shards[0]["source"], shards[1]["source"])
  edited = next(i for i, r in enumerate(records) if r["edit"]["kind"] != "none")
  assert np.abs(shards[edited]["source"] - shards[edited]["target"]).max() > 1e-3


@pytest.mark.parametrize("extra, message", [
    (["--height", "40"], r"--height 40 must be a positive multiple of 16"),
    (["--frames", "10"], r"--frames 10 must be 1 \+ 4·n"),
    (["--width", "0"], r"--width 0 must be a positive multiple of 16"),
])
def test_bad_clip_sizes(models, tmp_path, capsys, extra, message):
  with pytest.raises(SystemExit):
    prepare_data.main(argv(models, tmp_path / "out", *extra))
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "out").exists()


def test_needs_sizes_and_models(models, tmp_path, capsys):
  base = ["--synthetic-edits", "2", "--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit):
    prepare_data.main([*base, "--vae", models["vae"], "--text-encoder", models["text_encoder"], "--width", "32"])
  assert "--synthetic-edits needs --height" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    prepare_data.main([*base, "--vae", models["vae"], "--height", "32", "--width", "32"])
  assert "--synthetic-edits needs --vae and --text-encoder" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
