"""TAEHV in the stream CLI and the evaluator: `--vae` / `--decoder` take a TAEHV directory, and what they compute is
the library's offline pipeline (whole-clip encode → the DiT stream chunk by chunk → whole-clip decode), frame for
frame, at the fp32 tolerance; the frame geometry of `autoencoders.stream_chunks` against a by-hand model of it.

Tiny random models: tests/test_synthetic_data.py's `write_tiny_models` (DiT and text encoder),
tests/test_stream_cli.py's 8× Wan VAE (`VAE8`, `random_vae_params`) and tests/test_taehv.py's golden "tiny" TAEHV
(taew2_1's geometry: 8× space, 4× time, 16 latent channels; the reference's random init, whose decoded frames stay
mostly inside the clamp, where `init_taehv_params`' zero biases give frames of −1 nearly everywhere). Frames of 32×48:
4×6 latents, 2×3 DiT tokens a frame. The float frames the CLI and the evaluator convert to uint8 are recorded (their
`to_uint8`) and compared with the offline pipeline's, so the comparison is at float precision, not at uint8 rounding;
inputs are fresh random frames (the seed is in the message).
"""

import functools
import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import autoencoders, evaluate, param_io, stream, synthetic, taehv
from liveedit_jax.dit import load_dit
from liveedit_jax.mask_cache import MaskCacheConfig
from liveedit_jax.stream_step import StreamConfig, init_stream, stream_step
from liveedit_jax.umt5 import encode_prompts, load_text_encoder
from liveedit_jax.vae import load_vae, vae_decode, vae_encode
from liveedit_jax.video_io import to_float, to_uint8
from tests.numerics import FP32_RTOL, rel_err
from tests.test_stream_cli import VAE as VAE8
from tests.test_stream_cli import random_vae_params
from tests.test_synthetic_data import write_tiny_models
from tests.test_taehv import fixture as taehv_fixture
from tests.test_taehv import fixture_params as taehv_fixture_params

pytestmark = pytest.mark.filterwarnings("ignore:prompt 0 has:UserWarning")  # the test tokenizer splits words finely

H, W = 32, 48
SEED = 3  # the stream's noise (--seed), and the evaluator's clip index


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """Directories {"dit", "text_encoder", "wan" (8× Wan VAE), "taehv"} and a prompt embedding "context"."""
  root = tmp_path_factory.mktemp("stream_taehv")
  dirs = write_tiny_models(root)
  rng = np.random.default_rng(0)
  param_io.save_params(root / "wan", "vae", VAE8.to_dict(), random_vae_params(VAE8, rng), safetensors=True)
  param_io.save_params(root / "taehv", taehv.KIND, taehv_fixture("tiny")[0].to_dict(), taehv_fixture_params("tiny"),
                       safetensors=True)
  np.save(root / "context.npy", rng.standard_normal((1, 5, 40)).astype(np.float32))
  return {**dirs, "wan": str(root / "wan"), "taehv": str(root / "taehv"), "context": str(root / "context.npy")}


def random_clip(frames: int) -> tuple[np.ndarray, int]:
  seed = random.randrange(2**31)
  return np.random.default_rng(seed).integers(0, 256, (frames, H, W, 3), dtype=np.uint8), seed


def recorded_floats(monkeypatch, module) -> list[np.ndarray]:
  """The float frames `module` hands to `to_uint8`, in order (the edited frames it writes or returns)."""
  seen = []

  def recording(x):
    seen.append(np.asarray(x, np.float32))
    return to_uint8(x)

  monkeypatch.setattr(module, "to_uint8", recording)
  return seen


def offline_edit(models, latents: np.ndarray, context: np.ndarray, key: jax.Array) -> np.ndarray:
  """The DiT stream (mask cache 0.7, the CLIs' default) over `latents` [1, 3k, 4, 6, 16] in chunks of 3."""
  dit_config, dit_params = load_dit(models["dit"], compute_dtype="float32")
  options = StreamConfig(mask_cache=MaskCacheConfig(prune_ratio=0.7, cache_on="self_attn"))
  state = init_stream(dit_config, dit_params, context, latent_height=H // 8, latent_width=W // 8, options=options,
                      rng=key)
  edited = []
  for i in range(0, latents.shape[1], 3):
    out, state = stream_step(dit_config, dit_params, state, latents[:, i:i + 3])
    edited.append(np.asarray(out))
  return np.concatenate(edited, axis=1)


def padded(video: np.ndarray, frames: int) -> np.ndarray:
  """uint8 [T, …] → float [1, frames, …] in [−1, 1], the end repeated (the stream's padding of its last chunk)."""
  return to_float(np.concatenate([video, np.repeat(video[-1:], frames - len(video), axis=0)]))[None]


def run_cli(models, tmp_path, video: np.ndarray, *extra) -> np.ndarray:
  """The stream CLI on `video` (raw in, raw out) with a DiT, the context and `extra`; returns its output frames."""
  video.tofile(tmp_path / "in.rgb")
  stream.main(["--input", str(tmp_path / "in.rgb"), "--input-size", f"{W}x{H}", "--output", str(tmp_path / "out.rgb"),
               "--dit", models["dit"], "--context", models["context"], "--height", str(H), "--width", str(W),
               "--seed", str(SEED), "--no-compile-cache", *extra])
  raw = np.fromfile(tmp_path / "out.rgb", np.uint8)
  return raw.reshape(-1, H, raw.size // (len(video) * H * 3), 3)


def test_wan_encoder_taehv_decoder(models, tmp_path, monkeypatch):
  """--vae Wan --decoder TAEHV on 25 frames (chunks of 9, 12 and 4 padded to 12): the CLI's frames = the DiT
  stream's edited latents of `vae_encode` decoded by `taehv_decode`, unchanged in between: decoding them as Wan's
  de-normalised latents (z·std + mean) would be far off."""
  video, seed = random_clip(25)
  floats = recorded_floats(monkeypatch, stream)
  out = run_cli(models, tmp_path, video, "--vae", models["wan"], "--decoder", models["taehv"])
  got = np.concatenate(floats)
  assert out.shape == (25, H, W, 3) and [len(f) for f in floats] == [9, 12, 4]
  np.testing.assert_array_equal(out, to_uint8(got))

  wan_config, wan_params = load_vae(models["wan"], compute_dtype="float32")
  taehv_config, taehv_params = taehv.load_taehv(models["taehv"])
  edited = offline_edit(models, np.asarray(vae_encode(wan_config, wan_params, padded(video, 33))),
                        np.load(models["context"]), jax.random.key(SEED))
  want = np.asarray(taehv.taehv_decode(taehv_config, taehv_params, edited))[0]
  assert want.shape[0] == 33 and want[:25].std() > 0.1, f"seed {seed}"
  assert rel_err(got, want[:25]) <= FP32_RTOL, f"seed {seed}"
  mean, std = np.asarray(wan_config.latents_mean), np.asarray(wan_config.latents_std)
  denormalised = np.asarray(taehv.taehv_decode(taehv_config, taehv_params, edited * std + mean))[0]
  assert rel_err(denormalised[:25], want[:25]) > 0.05, f"seed {seed}"


def test_taehv_both_ways_flushes_the_lag(models, tmp_path, monkeypatch, capsys):
  """--vae TAEHV on 24 frames: chunks read 12, 12 and then a chunk of padding alone (frame 23 repeated) writes the
  3 frames the look-ahead held: 9 + 12 + 3 frames, output frame j the edit of input frame j (source | edit side by
  side: the source half is the input itself), equal to the offline `taehv_encode` → DiT stream → `taehv_decode`."""
  video, seed = random_clip(24)
  floats = recorded_floats(monkeypatch, stream)
  out = run_cli(models, tmp_path, video, "--vae", models["taehv"], "--side-by-side")
  got = np.concatenate(floats)
  assert out.shape == (24, H, 2 * W, 3) and [len(f) for f in floats] == [9, 12, 3]
  np.testing.assert_array_equal(out[:, :, :W], video)
  np.testing.assert_array_equal(out[:, :, W:], to_uint8(got))
  err = capsys.readouterr().err
  assert "chunks of 12 then 12 frames read, 9 then 12 written (the output 3 frames behind the input)" in err
  assert re.findall(r"chunk \d+: frames (\d+-\d+)", err) == ["0-8", "9-20", "21-23"]

  config, params = taehv.load_taehv(models["taehv"])
  latents = np.asarray(taehv.taehv_encode(config, params, padded(video, 36)))  # 9 latents: the stream's 3 chunks
  edited = offline_edit(models, latents, np.load(models["context"]), jax.random.key(SEED))
  want = np.asarray(taehv.taehv_decode(config, params, edited))[0, :24]
  assert want.std() > 0.1 and rel_err(got, want) <= FP32_RTOL, f"seed {seed}"


def test_evaluate_taehv_encoder_wan_decoder(models, monkeypatch):
  """The stream editor with --vae TAEHV --decoder Wan on a 21-frame clip: 21 frames scored against the 21 of the
  ground truth (9 + 12, the second chunk reading 9 real frames and 3 of padding), equal to the offline
  `taehv_encode` → DiT stream → `vae_decode`; the per-chunk scores follow the written chunks."""
  floats = recorded_floats(monkeypatch, evaluate)
  args = ["--editor", "stream", "--split", "val", "--clips", "1", "--seed", str(SEED), "--frames", "21", "--height",
          str(H), "--width", str(W), "--dit", models["dit"], "--text-encoder", models["text_encoder"],
          "--vae", models["taehv"], "--decoder", models["wan"]]
  result = evaluate.main(args)
  [record] = result["records"]
  got = np.concatenate(floats)
  assert record["frames"] == 21 and [len(f) for f in floats] == [9, 12]
  assert len(record["chunk_background_psnr"]) == 2 and 0 <= record["mask_iou"] <= 1
  assert result["config"]["vae"] == models["taehv"] and result["config"]["decoder"] == models["wan"]

  example = synthetic.make_example("val", SEED, frames=21, height=H, width=W)
  context = np.asarray(encode_prompts(load_text_encoder(models["text_encoder"], "float32"), [example.instruction]))
  config, params = taehv.load_taehv(models["taehv"])
  latents = np.asarray(taehv.taehv_encode(config, params, to_float(example.source)[None]))  # padded to 24 itself
  edited = offline_edit(models, latents, context, jax.random.key(SEED))
  wan_config, wan_params = load_vae(models["wan"], compute_dtype="float32")
  want = np.asarray(vae_decode(wan_config, wan_params, edited))[0]
  assert want.shape[0] == 21 and want.std() > 0.1
  assert rel_err(got, want) <= FP32_RTOL
  assert record["psnr"] == evaluate.score_clip(example, evaluate.Edited(to_uint8(got), 1.0, 1.0), [9, 12])["psnr"]


@pytest.mark.parametrize("lag", [0, 3])
def test_stream_chunks_geometry(lag):
  """For every input length up to 40 (a fresh random clip's prefixes): the sources are the input, in order, each
  chunk but the last writing 9 then 12 frames and the last at least one (so no chunk more than needed); chunk k
  encodes input frames [e_k − r_k, e_k) (r_0 = 9 + lag, then 12; e_k their running sum) with the frames past the
  input's end replaced by its last frame; `read` is called until it comes back short, never after."""
  chunking = autoencoders.Chunking(read=(9 + lag, 12), written=(9, 12))
  assert chunking.lag == lag
  seed = random.randrange(2**31)
  clip = np.random.default_rng(seed).integers(0, 256, (40, 2, 2, 3), dtype=np.uint8)
  for n in range(1, 41):
    video, reads = clip[:n], []

    def read(size):
      start = sum(got for _, got in reads)
      reads.append((size, len(video[start:start + size])))
      return video[start:start + size]

    chunks = list(autoencoders.stream_chunks(read, chunking))
    sources = [source for _, source in chunks]
    np.testing.assert_array_equal(np.concatenate(sources), video, f"n={n}, seed {seed}")
    assert all(len(s) == chunking.written[k > 0] for k, s in enumerate(sources[:-1])), n
    assert 0 < len(sources[-1]) <= chunking.written[len(chunks) > 1], n
    ends = np.cumsum([chunking.read[k > 0] for k in range(len(chunks))])
    for k, (frames, _) in enumerate(chunks):
      want = clip[np.minimum(np.arange(ends[k] - chunking.read[k > 0], ends[k]), n - 1)]
      np.testing.assert_array_equal(frames, want, f"n={n}, chunk {k}, seed {seed}")
    assert all(size == got for size, got in reads[:-1]) and reads[-1][1] < reads[-1][0], (n, reads)


@pytest.mark.parametrize("kind", ["wan", "taehv"])
def test_one_side_loads_only_the_params_it_runs(models, kind):
  """With --decoder each directory loads one side (`autoencoders.load(side=...)`): the two sides split the params
  between them, each the whole directory's arrays, and each side's alone is all that encoding or decoding reads
  (traced: a param it lacked would fail the trace)."""
  full = autoencoders.load(models[kind])
  encoder, decoder = (autoencoders.load(models[kind], side=side) for side in ("encoder", "decoder"))
  assert set(encoder.params) | set(decoder.params) == set(full.params)
  assert not set(encoder.params) & set(decoder.params) and "decoder" not in encoder.params
  for side in (encoder, decoder):
    for name, tree in side.params.items():
      jax.tree.map(np.testing.assert_array_equal, tree, full.params[name])
  frames = autoencoders.kind_of(full.config).encoder_frames(full.config, 2, True)
  latents = jax.eval_shape(functools.partial(autoencoders.encode, encoder.config), encoder.params,
                           jax.ShapeDtypeStruct((1, frames, H, W, 3), jnp.float32))
  video = jax.eval_shape(functools.partial(autoencoders.decode, decoder.config), decoder.params, latents)
  assert latents.shape[1] == 2 and video.shape[0] == 1
