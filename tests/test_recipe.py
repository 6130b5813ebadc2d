"""`python -m train.recipe`: the whole default-model recipe at toy sizes, its resumption and its package."""

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from liveedit_jax import cli, param_io
from liveedit_jax.dit import load_dit
from liveedit_jax.umt5 import encode_prompts, load_text_encoder
from liveedit_jax.vae import load_vae
from train import recipe
from train.shards import LatentShards


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The tiny recipe run once, every phase (about two minutes on 2 CPU cores)."""
  root = tmp_path_factory.mktemp("recipe")
  tiny = recipe.with_workdir(recipe.RECIPES["tiny"], str(root))
  assert recipe.run(tiny)
  return tiny


def test_every_phase_writes_its_output(run_dir):
  out = run_dir.outputs()
  assert all(out[phase].is_dir() for phase in recipe.PHASES), {p: out[p].is_dir() for p in recipe.PHASES}
  shards = LatentShards(out["data"])
  vae_config, _ = load_vae(out["autoencoder"])
  assert len(shards) == run_dir.clips
  assert shards.latent_shape == (1 + (run_dir.frames - 1) // vae_config.temporal_factor,
                                 run_dir.height // vae_config.spatial_factor, run_dir.width // vae_config.spatial_factor,
                                 vae_config.z_dim)
  metrics = json.loads((out["autoencoder"] / "metrics.json").read_text())
  assert np.isfinite(metrics["test_psnr"]) and np.isfinite(metrics["test_chroma_psnr"])
  assert metrics["steps"] == run_dir.autoencoder.steps
  # Stage 3 pruned differs from stage 3 only by the pruned-noise rollout.
  assert run_dir.stage("stage3_pruned") == run_dir.stage("stage3").replace(
      pruned_rollout=recipe.PRUNE_RATIO, workdir=str(out["stage3_pruned"].parent))
  for phase in ("stage1", "stage2", "stage3", "stage3_pruned"):
    assert (out[phase].parent / "tensorboard").is_dir(), phase


def test_a_finished_recipe_runs_nothing_and_a_deadline_starts_nothing(run_dir, tmp_path, caplog):
  stamps = {p: p.stat().st_mtime_ns for p in run_dir.outputs().values()}
  with caplog.at_level("INFO", logger="train.recipe"):
    assert recipe.run(run_dir)
  assert {p: p.stat().st_mtime_ns for p in run_dir.outputs().values()} == stamps
  assert all(f"{phase}: done" in caplog.text for phase in recipe.PHASES)
  fresh = recipe.with_workdir(recipe.RECIPES["tiny"], str(tmp_path / "fresh"))
  assert not recipe.run(fresh, max_seconds=-1)
  assert not any(p.exists() for p in fresh.outputs().values())


def test_package_holds_bfloat16_weights_equal_to_the_exports_and_their_hashes(run_dir, tmp_path):
  shipped = recipe.package(run_dir, tmp_path / "models", dit_phase="stage3_pruned")
  manifest = json.loads((shipped / "recipe.json").read_text())
  assert (manifest["frames"], manifest["height"], manifest["width"]) == (run_dir.frames, run_dir.height,
                                                                         run_dir.width)
  for name, digest in manifest["files"].items():
    assert hashlib.sha256((shipped / name).read_bytes()).hexdigest() == digest, name
  assert {name.split("/")[0] for name in manifest["files"]} == {"dit", "vae", "text_encoder"}
  assert all((shipped / part / param_io.SAFETENSORS_FILE).is_file() for part in ("dit", "vae", "text_encoder"))

  with safe_open(shipped / "dit" / param_io.SAFETENSORS_FILE, "np") as f:
    assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
  _, dit = load_dit(shipped / "dit")
  _, trained = load_dit(run_dir.outputs()["stage3_pruned"])
  leaves = [jax.tree_util.tree_leaves_with_path(t) for t in (dit, trained)]
  assert [path for path, _ in leaves[0]] == [path for path, _ in leaves[1]]
  for (path, a), (_, b) in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(jnp.asarray(b).astype(jnp.bfloat16), np.float32),
                                  err_msg=jax.tree_util.keystr(path))
  prompt = ["make the red circle blue"]
  shipped_context = np.asarray(encode_prompts(load_text_encoder(shipped / "text_encoder"), prompt), np.float32)
  context = np.asarray(encode_prompts(load_text_encoder(run_dir.outputs()["text_encoder"]), prompt), np.float32)
  assert np.abs(shipped_context - context).max() <= 2e-2 * np.abs(context).max()  # bfloat16 weights


def test_a_run_continued_with_another_time_compression_is_refused(run_dir):
  """The data's clip length follows the autoencoder's time compression, so a later call whose --autoencoder
  changes it (here 4× → 2×) would encode clips of another length with the trained autoencoder."""
  halved = (False, True, False)
  other = dataclasses.replace(run_dir, autoencoder=dataclasses.replace(
      run_dir.autoencoder, vae_overrides=(("temporal_downsample", halved),)))
  assert (run_dir.frames, other.frames) == (21, 11)
  with pytest.raises(cli.UserError, match="compresses time 4×, this run's --autoencoder 2×"):
    recipe.run(other)
  with pytest.raises(cli.UserError, match="compresses time 4×"):
    recipe.main(["tiny", "--workdir", str(run_dir.workdir), "--package", str(run_dir.workdir) + "/p",
                 "--autoencoder", json.dumps({"vae_overrides": {"temporal_downsample": list(halved)}})])
