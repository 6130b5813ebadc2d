"""The training loop on the tiny config: losses fall, resume equals an uninterrupted run, non-finite steps are
skipped and stop the run, every entry point runs. Runs of one stage share one compiled step (same step config)."""

import json
import shutil
import subprocess
import sys

import imageio_ffmpeg
import jax
import ml_dtypes
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from liveedit_jax.bench import train as bench
from liveedit_jax.param_io import cast_tree, load_params, save_params
from liveedit_jax.tokenizer import Tokenizer
from liveedit_jax.umt5 import UMT5Config, TextEncoder, encode_prompts, init_umt5_params
from liveedit_jax.vae import VAEConfig, init_vae_params, vae_encode
from tests.test_umt5_tokenizer import write_tokenizer
from train import cli, prepare_data, sharding, stage1, stage2, stage3, step as train_step
from train.configs import TRAIN_PRESETS, TrainConfig
from train.loop import NonFiniteError, initial_state, train
from train.shards import LatentShards, ShardWriter


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """8 examples at the tiny sizes: one global batch, so every step sees the same examples (a fixed batch)."""
  out = tmp_path_factory.mktemp("data") / "tiny"
  prepare_data.main(["--config", "tiny", "--synthetic", "8", "--dtype", "float32", "--out", str(out)])
  return str(out)


def _config(stage, data_dir, workdir, **overrides):
  return TrainConfig.preset("tiny", stage, data_dir=data_dir, workdir=str(workdir), **overrides)


def _mean(history, key, first, count):
  values = [h[key] for h in history]
  return float(np.mean(values[first:first + count] if first >= 0 else values[first:]))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_loss_falls_on_a_fixed_batch(stage, data_dir, tmp_path):
  history = train(_config(stage, data_dir, tmp_path, steps=40, checkpoint_every=100))
  assert [h["step"] for h in history] == list(range(1, 41))
  if stage < 3:
    assert _mean(history, "loss", -5, 5) < 0.85 * _mean(history, "loss", 0, 5)
  else:
    assert _mean(history, "critic_loss", -8, 8) < 0.85 * _mean(history, "critic_loss", 0, 8)
    generator = history[::2]  # gen_every = 2: the generator's metrics are refreshed on odd steps
    assert _mean(generator, "mse", -5, 5) < 0.85 * _mean(generator, "mse", 0, 5)
  assert all(h["skipped"] == 0 for h in history)


def test_resume_after_a_kill_equals_an_uninterrupted_run(data_dir, tmp_path):
  """Stage 3 (two trained trees, EMA, generator every other step): killed after step 3, resumed from the step-2
  checkpoint, steps 3–6 repeat the uninterrupted run's losses and end at the same weights."""
  whole = train(_config(3, data_dir, tmp_path / "whole", steps=6, checkpoint_every=2))
  resumed_dir = tmp_path / "resumed"
  killed = train(_config(3, data_dir, resumed_dir, steps=6, checkpoint_every=2), stop_at=3)
  assert [h["step"] for h in killed] == [1, 2, 3]
  assert not (resumed_dir / "export").exists()
  resumed = train(_config(3, data_dir, resumed_dir, steps=6, checkpoint_every=2))
  assert [h["step"] for h in resumed] == [3, 4, 5, 6]
  for a, b in zip(whole[2:], resumed):
    for key in ("critic_loss", "gen_loss", "dmd", "mse", "exit_step", "critic_exit_step"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=f"step {a['step']} {key}")
  with ocp.StandardCheckpointer() as checkpointer:
    final = [checkpointer.restore((d / "checkpoints" / "6" / "state").absolute())
             for d in (tmp_path / "whole", resumed_dir)]
  for a, b in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_nonfinite_step_leaves_the_state_unchanged(data_dir, tmp_path):
  config = _config(1, data_dir, tmp_path)
  mesh = sharding.make_mesh(1, -1)
  state, frozen = train_step.random_init(config, mesh)
  before = jax.device_get(state)
  shapes = {"source": (8, 6, 4, 4, 16), "target": (8, 6, 4, 4, 16), "context": (8, 16, 40)}
  batch = {k: jnp.full(s, jnp.nan if k == "target" else 0.5, jnp.float32) for k, s in shapes.items()}
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  step = train_step.compile_step(config, mesh, state, batch, frozen)
  with jax.transfer_guard("disallow"):
    state, metrics = step(state, batch, frozen)
  after = jax.device_get(state)
  assert int(after.step) == 1 and int(after.nonfinite) == 1 and float(metrics["skipped"]) == 1.0
  for name, a, b in (("params", before.params, after.params), ("opt_state", before.opt_state, after.opt_state),
                     ("ema", before.ema, after.ema)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(y, x, err_msg=name)


def test_repeated_nonfinite_steps_stop_the_run_at_the_last_good_checkpoint(data_dir, tmp_path):
  train(_config(1, data_dir, tmp_path, steps=2, checkpoint_every=2))
  good = load_params(tmp_path / "export")
  bad_data = tmp_path / "nan-data"
  shutil.copytree(data_dir, bad_data)
  target = bad_data / "shard-00000" / "target.npy"
  np.save(target, np.full_like(np.load(target), np.nan))
  with pytest.raises(NonFiniteError, match="steps 3–5"):
    train(_config(1, str(bad_data), tmp_path, steps=10, checkpoint_every=2, max_nonfinite=3))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2]
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.restore((tmp_path / "checkpoints" / "2" / "state").absolute())
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(saved["params"]["model"])):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


@pytest.mark.parametrize("entry", [stage1, stage2, stage3])
def test_stage_entry_point_runs_two_steps(entry, data_dir, tmp_path, capsys):
  entry.main(["--config", "tiny", "--data-dir", data_dir, "--workdir", str(tmp_path), "--steps", "2"])
  last = json.loads(capsys.readouterr().out.splitlines()[0])
  assert last["step"] == 2 and last["skipped"] == 0
  assert (tmp_path / "checkpoints" / "2").is_dir() and (tmp_path / "export_ema" / "config.json").is_file()


def test_prepare_data_from_latents_and_shard_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  latents = tmp_path / "latents"
  latents.mkdir()
  pairs = {}
  for name in ("b", "a"):
    pairs[name] = {k: rng.standard_normal(s).astype(np.float32)
                   for k, s in (("source", (6, 4, 4, 16)), ("target", (6, 4, 4, 16)), ("context", (16, 40)))}
    for k, v in pairs[name].items():
      np.save(latents / f"{name}.{k}.npy", v)
  prepare_data.main(["--latents", str(latents), "--out", str(tmp_path / "shards"), "--shard-size", "1"])
  shards = LatentShards(tmp_path / "shards")
  assert len(shards) == 2 and shards.index["dtype"] == "bfloat16" and len(shards.index["shards"]) == 2
  for i, name in enumerate(("a", "b")):  # sorted by id, stored in bfloat16
    for k, v in pairs[name].items():
      np.testing.assert_allclose(shards[i][k], v, rtol=2**-8, atol=0)
  with pytest.raises(FileExistsError):
    ShardWriter(tmp_path / "shards", (6, 4, 4, 16), (16, 40))


def test_train_benchmark_runs_on_cpu(capsys):
  bench.main(["--stage", "3", "--config", "tiny", "--frames", "6", "--height", "32", "--width", "32", "--batch", "8",
              "--warmup", "0", "--iters", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
  assert [r["step"] for r in rows] == ["generator", "critic", "average"]
  assert all(r["ms"] > 0 and r["model_tflop"] > 0 and r["flops_source"].startswith("analytic") for r in rows)


def test_python_m_entry_points_parse():
  commands = [["train.stage1"], ["train.stage2"], ["train.stage3"], ["train.prepare_data"],
              ["liveedit_jax.bench", "train"]]
  runs = [subprocess.Popen([sys.executable, "-m", *c, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for c in commands]
  for command, run in zip(commands, runs):
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0 and f"usage: python -m {' '.join(command)}" in out, err


def test_command_line_overrides():
  config = cli.parse_config(3, ["--config", "tiny", "--steps", "10", "--lr", "1e-4", "--remat", "true",
                                "--timesteps", "1000,500"])
  assert (config.stage, config.steps, config.lr, config.remat, config.timesteps) == (3, 10, 1e-4, True,
                                                                                     (1000.0, 500.0))
  assert config.replace(steps=20, lr=3e-3, remat=False, timesteps=TrainConfig().timesteps) == \
      TrainConfig.preset("tiny", 3)


def test_every_preset_loads():
  for name, stages in TRAIN_PRESETS.items():
    for stage, config in stages.items():
      assert config.stage == stage and TrainConfig.preset(name, stage) == config
      config.dit()
  with pytest.raises(ValueError, match="valid presets"):
    TrainConfig.preset("huge", 1)
  with pytest.raises(ValueError, match="multiple of chunk_frames"):
    TrainConfig.preset("tiny", 2, frames=7)


def test_prepare_data_from_videos(tmp_path):
  """Video pairs and prompts → shards holding the VAE's latents of the decoded frames and umT5's embeddings."""
  rng = np.random.default_rng(0)

  def random_params(init):  # random weights without compiling an initialiser
    shapes = jax.eval_shape(init)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

  vae_config, text_config = VAEConfig.preset("tiny"), UMT5Config.preset("tiny")
  vae_params = random_params(lambda: init_vae_params(vae_config, jax.random.key(0)))
  encoder = TextEncoder(text_config, random_params(lambda: init_umt5_params(text_config, jax.random.key(0))),
                        Tokenizer(write_tokenizer(tmp_path / "tokenizer"), text_config.text_len), "test")
  videos = {name: rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8) for name in ("a", "a_edit", "b", "b_edit")}
  for name, frames in videos.items():  # lossless RGB, so the decoded frames are the written ones
    # ffmpeg run directly: imageio_ffmpeg's writer forks with a Python pre-exec hook, which JAX warns about.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-s", "48x32", "-i", "pipe:0", "-c:v", "libx264rgb", "-qp", "0",
                    str(tmp_path / f"{name}.mkv")], input=frames.tobytes(), check=True, start_new_session=True)
  prompts = {"a": "a cat in the rain", "b": "neon street"}
  manifest = tmp_path / "pairs.jsonl"
  manifest.write_text("\n".join(json.dumps({"source": f"{k}.mkv", "target": f"{k}_edit.mkv", "prompt": p})
                                for k, p in prompts.items()))
  examples = prepare_data.video_examples(manifest, vae_config, vae_params, encoder, frames=5)
  shards = LatentShards(prepare_data.write(str(tmp_path / "shards"), examples, 256, "float32"))
  assert len(shards) == 2 and shards.latent_shape == (2, 4, 6, 16) and shards.context_shape == (16, 40)
  encode = jax.jit(vae_encode, static_argnums=0)
  for i, name in enumerate(prompts):
    for key, video in (("source", name), ("target", f"{name}_edit")):
      frames = videos[video][None, :5].astype(np.float32) / 127.5 - 1.0
      np.testing.assert_allclose(shards[i][key], np.asarray(encode(vae_config, vae_params, frames))[0], rtol=1e-6,
                                 atol=1e-6)
    np.testing.assert_allclose(shards[i]["context"], np.asarray(encode_prompts(encoder, [prompts[name]]))[0],
                               rtol=1e-6, atol=1e-6)


def test_stages_start_from_the_previous_stages_exports(data_dir, tmp_path):
  """Stage 2 starts from stage 1's export; stage 3's generator from stage 2's EMA export and its fake and real
  scores from stage 1's export, here stored in bfloat16 and restored into float32 master weights."""
  mesh = sharding.make_mesh(1, -1)
  train(_config(1, data_dir, tmp_path / "s1", steps=2))
  stage1 = load_params(tmp_path / "s1" / "export")
  state, frozen = initial_state(_config(2, data_dir, tmp_path / "s2", init=str(tmp_path / "s1" / "export")), mesh,
                                fresh=True)
  assert frozen == {}
  for tree in (state.params["model"], state.ema):
    for a, b in zip(jax.tree.leaves(stage1), jax.tree.leaves(tree)):
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  train(_config(2, data_dir, tmp_path / "s2", steps=2, init=str(tmp_path / "s1" / "export")))

  stage1_bf16 = tmp_path / "s1-bf16"
  save_params(stage1_bf16, "dit", json.loads(TrainConfig.preset("tiny", 1).dit().to_json()),
              cast_tree(stage1, ml_dtypes.bfloat16))
  config = _config(3, data_dir, tmp_path / "s3", steps=2, init=str(tmp_path / "s2" / "export_ema"),
                   score_init=str(stage1_bf16))
  state, frozen = initial_state(config, mesh, fresh=True)
  stage2_ema = load_params(tmp_path / "s2" / "export_ema")
  for a, b in zip(jax.tree.leaves(stage2_ema), jax.tree.leaves(state.params["generator"])):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  for tree in (state.params["fake_score"], frozen["real_score"]):
    for a, b in zip(jax.tree.leaves(stage1), jax.tree.leaves(tree)):
      assert b.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32))
  history = train(config)
  assert history[-1]["step"] == 2 and history[-1]["skipped"] == 0

  wrong = tmp_path / "wrong"
  shutil.copytree(tmp_path / "s1" / "export", wrong)
  meta = json.loads((wrong / "config.json").read_text())
  meta["config"]["num_layers"] = 3
  (wrong / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="holds a DiT"):
    initial_state(_config(2, data_dir, tmp_path / "s2b", init=str(wrong)), mesh, fresh=True)
