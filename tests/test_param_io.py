"""`param_io`'s single-file safetensors format (the shipped default model): a round trip through bfloat16 storage
equals the bfloat16 cast of the tree, a loaded DiT computes what the saved one does, and damaged or mismatched
files fail with one message naming the file."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from liveedit_jax import param_io
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, init_dit_params, load_dit


def _tree(rng):
  return {"a": {"kernel": rng.standard_normal((3, 5)).astype(np.float32)},
          "blocks": {"0": {"bias": rng.standard_normal(5).astype(np.float32)}},
          "steps": np.arange(4, dtype=np.int32)}


def test_round_trip_keeps_every_leaf(tmp_path):
  rng = np.random.default_rng()
  tree = _tree(rng)
  param_io.save_params(tmp_path / "m", "dit", {}, tree, safetensors=True)
  assert (tmp_path / "m" / param_io.SAFETENSORS_FILE).is_file() and not (tmp_path / "m" / "params").exists()
  loaded = param_io.load_params(tmp_path / "m")
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    got = loaded
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(got, leaf)
    assert got.dtype == leaf.dtype


def test_bfloat16_storage_restores_into_float32(tmp_path):
  rng = np.random.default_rng()
  tree = {k: v for k, v in _tree(rng).items() if k != "steps"}
  param_io.save_params(tmp_path / "m", "dit", {}, param_io.cast_tree(tree, ml_dtypes.bfloat16), safetensors=True)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), tree)
  loaded = param_io.load_params(tmp_path / "m", abstract)
  expected = jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32), tree)
  jax.tree.map(lambda g, e: np.testing.assert_array_equal(np.asarray(g), e), loaded, expected)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(loaded))


def test_a_safetensors_dit_computes_as_the_saved_one(tmp_path):
  config = DiTConfig.preset("tiny")
  params = init_dit_params(config, jax.random.key(np.random.randint(1 << 30)))
  # The zero-initialised head gets weights, so the output depends on every layer.
  rng = np.random.default_rng()
  params["head"]["proj"]["kernel"] = jnp.asarray(rng.standard_normal(params["head"]["proj"]["kernel"].shape),
                                                 jnp.float32)
  param_io.save_params(tmp_path / "dit", "dit", dataclasses.asdict(config), jax.device_get(params),
                       safetensors=True)
  _, loaded = load_dit(str(tmp_path / "dit"))
  x = jnp.asarray(rng.standard_normal((1, 3, 4, 4, 32)), jnp.float32)
  context = jnp.asarray(rng.standard_normal((1, 16, 40)), jnp.float32)
  t = jnp.asarray([500.0])
  np.testing.assert_array_equal(np.asarray(dit_forward(config, loaded, x, t, context)),
                                np.asarray(dit_forward(config, params, x, t, context)))


def test_damaged_and_mismatched_files_are_named(tmp_path):
  rng = np.random.default_rng()
  tree = {k: v for k, v in _tree(rng).items() if k != "steps"}
  param_io.save_params(tmp_path / "m", "dit", {}, tree, safetensors=True)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), tree)
  wrong = dict(abstract, a={"kernel": jax.ShapeDtypeStruct((3, 6), jnp.float32)}, extra={
      "w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  with pytest.raises(ValueError, match=r"a/kernel: expected shape \(3, 6\), found \(3, 5\)") as info:
    param_io.load_params(tmp_path / "m", wrong)
  assert "missing extra/w" in str(info.value)
  file = tmp_path / "m" / param_io.SAFETENSORS_FILE
  file.write_bytes(file.read_bytes()[:40])
  with pytest.raises(ValueError, match=f"{file} is not a readable safetensors file"):
    param_io.load_params(tmp_path / "m", abstract)
