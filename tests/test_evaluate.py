"""`python -m liveedit_jax.evaluate`: the oracle editors score the ceiling and the baseline, the stream editor is
the library pipeline bit for bit, the sampler editor runs, and user mistakes get one line.

Tiny random checkpoints from tests/test_synthetic_data.py's `write_tiny_models` (tests/test_stream_cli.py's DiT
and VAE, a tiny umT5 with tests/test_umt5_tokenizer.py's sentencepiece model and tests/test_umt5.py's weights).
Clips are 21 frames of 32×48 (stream chunks of 9 and 12 frames; the VAE's 4× gives 8×12 latents, 4×6 DiT tokens
of 8×8 pixels a frame), so the
stream, sampler and by-hand runs share one set of compiles through the module-level jits.
"""

import dataclasses
import json
import re
import subprocess
import sys

import imageio_ffmpeg
import jax
import numpy as np
import pytest

from liveedit_jax import autoencoders, evaluate, synthetic
from liveedit_jax.dit import load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.sampler import sample_edit
from liveedit_jax.stream_step import StreamConfig, init_stream, stream_step
from liveedit_jax.umt5 import KIND as UMT5_KIND
from liveedit_jax.umt5 import encode_prompts, load_text_encoder
from liveedit_jax.vae import load_vae
from liveedit_jax.video_io import open_native_reader, to_float, to_uint8
from tests.test_stream_cli import DIT
from tests.test_stream_cli import VAE as VAE8
from tests.test_synthetic_data import VAE, write_tiny_models
from tests.test_umt5 import TINY as UMT5_TINY

pytestmark = pytest.mark.filterwarnings("ignore:prompt 0 has:UserWarning")  # the test tokenizer splits words finely

H, W, FRAMES = 32, 48, 21
PIXELS_PER_TOKEN = 8  # VAE factor 4 × DiT patch 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return write_tiny_models(tmp_path_factory.mktemp("evaluate_models"))


def model_args(models, *extra):
  return ["--dit", models["dit"], "--vae", models["vae"], "--text-encoder", models["text_encoder"], *extra]


def sizes(frames=FRAMES, height=H, width=W):
  return ["--frames", str(frames), "--height", str(height), "--width", str(width)]


def host_context(models, instruction):
  """The instruction's embedding on the host, as the editors hold it (so the by-hand runs share their compiles)."""
  return np.asarray(encode_prompts(load_text_encoder(models["text_encoder"], "float32"), [instruction]))


def hand_psnr(pred, target, where):
  """PSNR (peak 1) over the pixels where `where` [T, H, W], the slow way."""
  err = [(float(p) / 255 - float(t) / 255) ** 2 for p, t in zip(pred[where].ravel(), target[where].ravel())]
  return 10 * np.log10(1 / np.mean(err))


def test_oracle_editors(tmp_path):
  """target: PSNRs at the cap, accuracy 1 on recolours, flicker 0; source: background at the cap, edit PSNR the
  hand-computed masked PSNR of source vs target, accuracy 0 on recolours. Clip i is test example seed + i."""
  common = ["--split", "test", "--clips", "12", "--seed", "0", *sizes(9, 32, 32)]
  target = evaluate.main(["--editor", "target", *common, "--json", str(tmp_path / "target.json")])
  source = evaluate.main(["--editor", "source", *common, "--json", str(tmp_path / "source.json")])
  assert json.loads((tmp_path / "target.json").read_text()) == target  # the JSON is what main returns
  for result in (target, source):
    assert set(evaluate.SUMMARY_KEYS) <= set(result["summary"])
    assert result["summary"]["mask_iou"] is None and result["summary"]["fps"] is None
    assert [r["index"] for r in result["records"]] == list(range(12))
  cap = target["records"][0]["psnr"]
  assert cap >= 60  # metrics' cap for identical frames
  recolours = 0
  for t, s in zip(target["records"], source["records"]):
    example = synthetic.make_example("test", t["index"], frames=9, height=32, width=32)
    assert t["instruction"] == example.instruction and t["edit"] == dataclasses.asdict(example.edit)
    assert t["background_psnr"] == t["edit_psnr"] == t["chroma_psnr"] == s["background_psnr"] == cap
    assert t["flicker"] == 0 and t["chunk_background_psnr"] == [cap]
    assert s["edit_psnr"] == pytest.approx(hand_psnr(example.source, example.target, example.mask), rel=1e-9)
    if t["edit"]["kind"] == "recolor":
      recolours += 1
      assert t["edit_accuracy"] == 1.0 and s["edit_accuracy"] == 0.0
    else:
      assert t["edit_accuracy"] is None and s["edit_accuracy"] is None
  assert recolours >= 2
  assert source["summary"]["edit_accuracy"] == 0.0 and target["summary"]["edit_accuracy"] == 1.0
  assert source["summary"]["by_kind"]["recolor"]["clips"] == recolours


def stream_by_hand(models, example, options):
  """The library pipeline on one clip: encode 9 then 12 frames, stream_step, decode; the active tokens too."""
  dit_config, dit_params = load_dit(models["dit"], compute_dtype="float32")
  vae_config, vae_params = load_vae(models["vae"], compute_dtype="float32")
  context = host_context(models, example.instruction)
  state = init_stream(dit_config, dit_params, context, latent_height=H // 4, latent_width=W // 4, options=options,
                      rng=jax.random.key(example.index))
  vae_state = autoencoders.init_state(vae_config, vae_config, 1, H, W)
  out, active = [], []
  for i, chunk in enumerate((slice(0, 9), slice(9, 21))):
    if i:
      active.append(np.asarray(state.tokens.active[0]))
    vae_state, latents = evaluate.encode_chunk(vae_config, vae_params, vae_state,
                                               to_float(example.source[chunk])[None], first=i == 0)
    edited, state = stream_step(dit_config, dit_params, state, latents)
    vae_state, decoded = evaluate.decode_chunk(vae_config, vae_params, vae_state, edited, first=i == 0)
    out.append(to_uint8(np.asarray(decoded[0])))
  return np.concatenate(out), active


def test_stream_editor_equals_pipeline_and_mask_iou(models):
  """The stream editor's frames = the library pipeline's (uint8, exactly); its mask_iou = the IoU of the
  by-hand active tokens with the tokens the true mask touches (a slow loop over pixels)."""
  args = evaluate.parse_args(["--editor", "stream", "--split", "val", *sizes(), *model_args(models)])
  editor, geometry = evaluate.build_editor(args)
  example = synthetic.make_example("val", 3, frames=FRAMES, height=H, width=W)
  edited = editor(example)
  options = StreamConfig(mask_cache=MaskCacheConfig(prune_ratio=0.7, cache_on="self_attn"))
  frames, active = stream_by_hand(models, example, options)
  np.testing.assert_array_equal(edited.frames, frames)
  assert edited.frames.std() > 5  # an image, not a constant the comparison could not tell apart

  # Chunk 1 = latent frames 3–5 = video frames 9–20; a token is touched if any pixel of its 8×8 square is.
  touched = np.zeros((H // PIXELS_PER_TOKEN, W // PIXELS_PER_TOKEN), bool)
  for t, y, x in zip(*np.nonzero(example.mask[9:21])):
    touched[y // PIXELS_PER_TOKEN, x // PIXELS_PER_TOKEN] = True
  recomputed = np.zeros(touched.size, bool)
  recomputed[active[0]] = True
  touched = touched.ravel()
  union = (recomputed | touched).sum()
  want = (recomputed & touched).sum() / union if union else 1.0
  record = evaluate.score_clip(example, edited, evaluate.frame_chunks(FRAMES, geometry.pop("chunk_sizes")),
                               **geometry)
  assert 0 <= record["mask_iou"] <= 1
  assert record["mask_iou"] == pytest.approx(want, rel=1e-12) and record["chunk_mask_iou"] == [record["mask_iou"]]
  assert len(record["chunk_background_psnr"]) == 2


def test_stream_cli_json_and_videos(models, tmp_path, capsys):
  """Two clips through the CLI: the summary keys, mask_iou in [0, 1], timings, one side-by-side mp4 per clip
  asked for, and a table on stdout; without the mask cache mask_iou is null."""
  out = tmp_path / "stream.json"
  result = evaluate.main(["--editor", "stream", "--split", "val", "--clips", "2", "--seed", "3", *sizes(),
                          *model_args(models), "--json", str(out), "--videos", str(tmp_path / "videos"),
                          "--video-clips", "1"])
  summary = json.loads(out.read_text())["summary"]
  assert set(evaluate.SUMMARY_KEYS) <= set(summary)
  assert 0 <= summary["mask_iou"] <= 1 and summary["fps"] > 0 and summary["first_frame_s"] > 0
  assert summary["latency_s"] > 0 and len(summary["chunk_background_psnr"]) == 2
  assert [r["index"] for r in result["records"]] == [3, 4]
  assert all(0 <= r["mask_iou"] <= 1 and r["fps"] > 0 for r in result["records"])
  # fps over the clips after the first: its frames over its editing time.
  later = result["records"][1]
  assert summary["fps"] == pytest.approx(later["frames"] / later["time_s"], rel=1e-12)
  videos = sorted((tmp_path / "videos").iterdir())
  assert [v.name for v in videos] == [f"val-000003-{result['records'][0]['edit']['kind']}.mp4"]
  with open_native_reader(str(videos[0])) as reader:  # imageio_ffmpeg's reader would fork with a pre-exec hook
    assert (reader.width, reader.height) == (3 * W, H)  # source | edit | target
    assert len(reader.read(FRAMES + 1)) == FRAMES
  table = capsys.readouterr().out
  assert "editor stream · split val · 2 clips" in table and "frames/s" in table

  no_cache = evaluate.main(["--editor", "stream", "--split", "val", "--clips", "1", *sizes(9),
                            *model_args(models, "--cache-on", "none")])
  assert no_cache["summary"]["mask_iou"] is None and no_cache["records"][0]["mask_iou"] is None


def test_sampler_cli(models, tmp_path):
  """The chunk-causal sampler (2 steps, guidance 3) through the CLI writes the summary; its clip's PSNR is the
  PSNR of the library pipeline by hand (vae_encode → sample_edit with a zero negative prompt → vae_decode)."""
  out = tmp_path / "sampler.json"
  result = evaluate.main(["--editor", "sampler", "--chunk-causal", "--steps", "2", "--guidance", "3",
                          "--split", "heldout", "--clips", "1", *sizes(), *model_args(models), "--json", str(out)])
  summary = json.loads(out.read_text())["summary"]
  assert set(evaluate.SUMMARY_KEYS) <= set(summary) and summary["mask_iou"] is None and summary["fps"] > 0
  example = synthetic.make_example("heldout", 0, frames=FRAMES, height=H, width=W)
  dit_config, dit_params = load_dit(models["dit"], compute_dtype="float32")
  vae_config, vae_params = load_vae(models["vae"], compute_dtype="float32")
  context = host_context(models, example.instruction)
  source = evaluate.encode_clip(vae_config, vae_params, to_float(example.source)[None])
  latents = sample_edit(dit_config, dit_params, source, context, np.zeros(context.shape, np.float32),
                        jax.random.key(0), chunk_frames=3, num_steps=2, guidance=3.0)
  frames = to_uint8(np.asarray(evaluate.decode_clip(vae_config, vae_params, latents))[0])
  assert frames.std() > 5
  assert result["records"][0]["psnr"] == pytest.approx(hand_psnr(frames, example.target, np.ones(
      example.mask.shape, bool)), rel=1e-9)


def write_config_dir(path, kind, config):
  """A model directory holding only config.json: enough for the checks that run before any weights load."""
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"kind": kind, "config": config}))
  return str(path)


def test_errors_are_one_line(models, tmp_path, capsys):
  """Each mistake: a non-zero exit and one line on stderr naming the problem, before any model loads."""
  bad = {"vae_z8": write_config_dir(tmp_path / "vae_z8", "vae", VAE.replace(
             z_dim=8, latents_mean=(0.0,) * 8, latents_std=(1.0,) * 8).to_dict()),
         "umt5_wide": write_config_dir(tmp_path / "umt5_wide", UMT5_KIND, {
             **UMT5_TINY.replace(dim=48).to_dict(), "fingerprint": "x"}),
         "vae_s8": write_config_dir(tmp_path / "vae_s8", "vae", VAE8.to_dict()),
         "dit_p4": write_config_dir(tmp_path / "dit_p4", "dit", dataclasses.asdict(DIT.replace(patch_size=(1, 4, 4))))}
  (tmp_path / "exists.json").write_text("{}")
  stream = ["--editor", "stream", *model_args(models)]
  cases = [
      (["--editor", "magic"], r"argument --editor: invalid choice: 'magic'"),
      (["--editor", "source", "--split", "dev"], r"argument --split: invalid choice: 'dev'"),
      (["--editor", "source", "--clips", "0"], r"--clips must be positive, got 0"),
      (["--editor", "source", *sizes(9, 40, 48)], r"--height 40 must be a positive multiple of 16"),
      ([*stream, *sizes(20)], r"--frames 20: the stream editor needs 1 \+ 4·n frames"),
      (["--editor", "sampler", "--chunk-causal", *model_args(models), *sizes(17)],
       r"--frames 17 gives 5 latent frames; --chunk-causal needs a multiple of 3"),
      ([*stream, *sizes(), "--vae", bad["vae_z8"]], r"vae_z8: VAE z_dim 8 differs from the DiT's latent_channels 16"),
      ([*stream, *sizes(), "--text-encoder", bad["umt5_wide"]],
       r"umt5_wide: text encoder width 48 differs from the DiT's text_dim 40 \(.*dit\)"),
      ([*stream, *sizes(), "--dit", bad["dit_p4"], "--vae", bad["vae_s8"]],
       r"--height 32 and --width 48 must be positive multiples of 32 and 32: the VAE \(.*vae_s8\) downsamples by 8 "
       r"and the DiT's patch \(.*dit_p4\) is 4×4 latents"),
      ([*stream, *sizes(), "--dit", str(tmp_path / "nowhere")], r"nowhere"),
      (["--editor", "source", "--json", str(tmp_path / "exists.json")],
       r"--json .*exists.json exists; pass --overwrite"),
      (["--editor", "source", "--split", "val", "--seed", str(10**8 - 1), "--clips", "2"],
       r"example index 100000000 of split 'val'"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit) as exit_info:
      evaluate.run(argv)
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code in (1, 2) and len(lines) == 1, (argv, lines)
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), (argv, lines)


def test_error_from_a_real_process_has_no_traceback():
  result = subprocess.run([sys.executable, "-m", "liveedit_jax.evaluate", "--editor", "source", "--width", "50"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == ["error: --width 50 must be a positive multiple of 16 (the "
                                                "benchmark's frames)"]
