"""Training under a device mesh: the rule table shards the parameters, and the stage-3 train step on 8 fake CPU
devices (data 2 × fsdp 4) equals the 1-device step.

The device count is fixed when JAX starts, so the 8-device half runs in a subprocess: this file run as a script
(`python -m tests.test_train_mesh DATA WORKDIR` with XLA_FLAGS forcing 8 host devices) prints one JSON line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from tests.numerics import FP32_RTOL, rel_err
from train import prepare_data, sharding, step as train_step
from train.configs import TrainConfig
from train.loop import train

REPO = Path(__file__).resolve().parent.parent
STEPS = 3


def _config(data_dir, workdir, data, fsdp):
  return TrainConfig.preset("tiny", 3, data_dir=str(data_dir), workdir=str(workdir), steps=STEPS,
                            checkpoint_every=STEPS, mesh_data=data, mesh_fsdp=fsdp)


def _worker(data_dir: str, workdir: str) -> dict:
  """On 8 devices: sharded fractions of the 1.3B state's trees (abstract) and of the tiny state as initialised, then
  a 3-step stage-3 run on a 2 × 4 mesh."""
  assert jax.device_count() == 8, jax.devices()
  fractions = {}
  for data, fsdp in ((1, 8), (2, 4)):
    mesh = sharding.make_mesh(data, fsdp)
    for name in ("liveedit-1.3b", "tiny"):
      state = train_step.abstract_state(TrainConfig.preset(name, 3), mesh)
      for tree in ("params", "opt_state", "ema"):
        leaves = getattr(state, tree)
        fractions[f"{name} {data}x{fsdp} {tree}"] = sharding.sharded_fraction(
            leaves, jax.tree.map(lambda a: a.sharding, leaves))
  config = _config(data_dir, workdir, 2, 4)
  state, _ = train_step.random_init(config, sharding.make_mesh(2, 4))
  fractions["tiny 2x4 params as initialised"] = sharding.sharded_fraction(
      state.params, jax.tree.map(lambda a: a.sharding, state.params))
  return {"fractions": fractions, "history": train(config)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("mesh-data") / "tiny"
  prepare_data.main(["--config", "tiny", "--synthetic", "8", "--dtype", "float32", "--out", str(out)])
  return out


@pytest.fixture(scope="module")
def eight_devices(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mesh-8")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-m", "tests.test_train_mesh", str(data_dir), str(workdir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), workdir


def test_rule_table():
  fsdp = 8
  assert sharding.leaf_spec("blocks/ffn/fc1/kernel", (30, 1536, 8960), fsdp) == P(None, None, "fsdp")
  assert sharding.leaf_spec("blocks/modulation", (30, 6, 1536), fsdp) == P(None, None, "fsdp")
  assert sharding.leaf_spec("blocks/norm3/scale", (8, 12), fsdp) == P()  # the layer axis is never split
  assert sharding.leaf_spec("patch_embedding/kernel", (1, 2, 2, 32, 1536), fsdp) == P(None, None, None, None, "fsdp")
  assert sharding.leaf_spec("1/0/mu/head/proj/kernel", (1536, 64), fsdp) == P("fsdp", None)
  assert sharding.leaf_spec("head/proj/bias", (60,), fsdp) == P()
  assert sharding.leaf_spec("head/proj/kernel", (1536, 64), 1) == P()


def test_params_are_sharded_on_8_devices(eight_devices):
  fractions = eight_devices[0]["fractions"]
  assert len(fractions) == 13
  for name, fraction in fractions.items():
    assert fraction >= 0.98, f"{name}: only {fraction:.1%} of the bytes are sharded"


def test_8_device_step_equals_1_device_step(eight_devices, data_dir, tmp_path):
  result, workdir = eight_devices
  history = train(_config(data_dir, tmp_path, 1, -1))
  assert [h["step"] for h in result["history"]] == [h["step"] for h in history] == list(range(1, STEPS + 1))
  for a, b in zip(history, result["history"]):
    for key in ("critic_loss", "gen_loss", "dmd", "mse", "critic_grad_norm", "gen_grad_norm"):
      assert abs(b[key] - a[key]) <= FP32_RTOL * max(abs(a[key]), 1e-3), f"step {a['step']} {key}: {b[key]} vs {a[key]}"
  abstract = train_step.abstract_state(_config(data_dir, tmp_path, 1, -1), sharding.make_mesh(1, -1))
  with ocp.StandardCheckpointer() as checkpointer:  # the 8-device checkpoint is restored onto 1 device
    one, eight = (checkpointer.restore((Path(d) / "checkpoints" / str(STEPS) / "state").absolute(), abstract)
                  for d in (tmp_path, workdir))
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])  # noqa
  for tree in ("params", "ema", "opt_state"):
    err = rel_err(flat(getattr(eight, tree)), flat(getattr(one, tree)))
    assert err <= FP32_RTOL, f"{tree}: 8 devices vs 1, relative error {err:.2e}"


if __name__ == "__main__":
  print(json.dumps(_worker(sys.argv[1], sys.argv[2])))
