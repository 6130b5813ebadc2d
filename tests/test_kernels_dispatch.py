"""The "pallas" attention implementation: the measured-table policy, its registration, and the bench entry point."""

import json
import random
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liveedit_jax import attention as attention_mod
from liveedit_jax import fused
from liveedit_jax.attention import AttentionMask, attention, attention_reference
from liveedit_jax.bench.timing import time_interleaved
from liveedit_jax.config import DiTConfig
from liveedit_jax.dit import dit_forward, init_dit_params
from liveedit_kernels import bench, dispatch
from tests.numerics import BF16_RTOL


def test_policy_picks_the_fastest_measured_candidate():
  p = dispatch.Policy({"chunk_causal": {"cudnn": 25.2, "triton": 21.0, "tokamax_mosaic": 6.7},
                       "full": {"cudnn": 0.9, "xla": 3.8}})
  everything = ["xla", "cudnn", "triton"]
  assert p.choose("chunk_causal", everything, "cudnn") == "triton"  # tokamax is no candidate here
  assert p.choose("chunk_causal", ["xla", "cudnn"], "xla") == "cudnn"
  assert p.choose("full", everything, "cudnn") == "cudnn"  # an unmeasured kernel is never preferred
  assert p.choose("teacher_forcing", everything, "cudnn") == "cudnn"  # nothing measured: the default
  with pytest.raises(ValueError, match="unknown case"):
    p.choose("causal", everything, "xla")


def test_shipped_table_loads_and_ranks_cudnn_until_the_kernels_are_measured():
  table = json.loads(dispatch.TABLE.read_text())
  assert set(table["cases"]) <= set(dispatch.CASES)
  measured = {impl: ms for impl, ms in table["cases"]["chunk_causal"]["ms"].items()
              if impl in ("xla", "cudnn", "triton")}
  assert dispatch.load_policy().choose("chunk_causal", ["xla", "cudnn", "triton"], "xla") == min(
      measured, key=measured.__getitem__)
  assert dispatch.load_policy("/nonexistent/table.json").ms == {}


def test_hopper_is_a_candidate_only_where_it_runs():
  q16, q32 = jnp.zeros((1, 8, 2, 128), jnp.bfloat16), jnp.zeros((1, 8, 2, 128), jnp.float32)
  cc = AttentionMask("chunk_causal", 4680)
  h200 = "NVIDIA H200"
  assert "hopper" in dispatch._candidates(q16, cc, None, h200)
  assert "hopper" in dispatch._candidates(q16, attention_mod.FULL, None, "NVIDIA H100 80GB HBM3")
  assert "hopper" not in dispatch._candidates(q32, cc, None, h200)  # fp32
  assert "hopper" not in dispatch._candidates(q16, cc, None, "NVIDIA A100-SXM4-80GB")  # not sm90
  assert "hopper" not in dispatch._candidates(q16, attention_mod.FULL, jnp.ones((1,), jnp.int32), h200)
  assert "hopper" not in dispatch._candidates(q16, AttentionMask("chunk_causal", 40), None, h200)
  assert "hopper" not in dispatch._candidates(q16[..., :96], cc, None, h200)


def test_each_gpu_kind_gets_its_table():
  assert dispatch.table_for("NVIDIA H200") == dispatch.TABLES["H200"]
  assert dispatch.table_for("NVIDIA H100 80GB HBM3") == dispatch.TABLE
  assert dispatch.table_for("cpu") == dispatch.TABLE
  for path in dispatch.TABLES.values():
    assert set(dispatch.load_policy(path).ms) <= set(dispatch.CASES)


@pytest.mark.parametrize("mask, s, kv, case", [(AttentionMask("chunk_causal", 5), 20, False, "chunk_causal"),
                                               (AttentionMask("teacher_forcing", 5), 20, False, "teacher_forcing"),
                                               (attention_mod.FULL, 2000, False, "full"),
                                               (attention_mod.FULL, 2000, True, "full_kv_length"),
                                               (attention_mod.FULL, 512, False, "cross")])
def test_case_of(mask, s, kv, case):
  assert dispatch.case_of(mask, s, jnp.ones((1,)) if kv else None) == case


def test_pallas_impl_is_registered_and_falls_back_to_xla_off_gpu():
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  mask = AttentionMask("chunk_causal", 7)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 30, 2, 16)), jnp.float32) for _ in range(3))
  got = attention(q, k, v, mask=mask, impl="pallas")
  np.testing.assert_array_equal(got, attention_reference(q, k, v, mask.dense(30, 30)), err_msg=f"seed {seed}")


def test_fused_ops_register_and_fall_back_to_xla_off_gpu():
  """Importing dispatch gives liveedit_jax.fused a "pallas" version of each op; off GPU it is the reference,
  exactly. A family without the op raises instead of running the reference."""
  assert fused._IMPLS[("pallas", "modulated_layer_norm")] is dispatch.pallas_modulated_layer_norm
  assert fused._IMPLS[("pallas", "rms_norm_rope")] is dispatch.pallas_rms_norm_rope
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((1, 2, 5, 16)), jnp.float32)
  shift, scale = (jnp.asarray(rng.standard_normal((1, 2, 1, 16)), jnp.float32) for _ in range(2))
  np.testing.assert_array_equal(
      fused.modulated_layer_norm(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16, impl="pallas"),
      fused.modulated_layer_norm_reference(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16))
  cos, sin = (jnp.asarray(rng.standard_normal((10, 4)), jnp.float32) for _ in range(2))
  proj = x.reshape(1, 10, 16).astype(jnp.bfloat16)
  np.testing.assert_array_equal(fused.rms_norm_rope(proj, scale[0, 0, 0], cos, sin, num_heads=2, eps=1e-6,
                                                    impl="pallas"),
                                fused.rms_norm_rope_reference(proj, scale[0, 0, 0], cos, sin, num_heads=2, eps=1e-6))
  with pytest.raises(ValueError, match="unknown fused op"):
    fused.register_fused_impl("pallas", "layer_norm", lambda x: x)
  with pytest.raises(ValueError, match="modulated_layer_norm: implementation family 'mosaic' is not available"):
    fused.modulated_layer_norm(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16, impl="mosaic")
  with pytest.raises(ValueError, match="attention implementation 'mosaic' is not available"):
    attention(x, x, x, impl="mosaic")


PALLAS_WITHOUT_ENABLE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from liveedit_jax import fused
from liveedit_jax.attention import AttentionMask, attention, attention_reference
assert "liveedit_kernels.dispatch" not in sys.modules
rng = np.random.default_rng(int(sys.argv[1]))
q, k, v = (jnp.asarray(rng.standard_normal((1, 30, 2, 16)), jnp.float32) for _ in range(3))
mask = AttentionMask("chunk_causal", 7)
np.testing.assert_array_equal(jax.jit(lambda *a: attention(*a, mask=mask, impl="pallas"))(q, k, v),
                              attention_reference(q, k, v, mask.dense(30, 30)))
assert "liveedit_kernels.dispatch" in sys.modules
x = q.reshape(1, 2, 15, 32)
shift, scale = (jnp.asarray(rng.standard_normal((1, 2, 1, 32)), jnp.float32) for _ in range(2))
np.testing.assert_array_equal(
    fused.modulated_layer_norm(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16, impl="pallas"),
    fused.modulated_layer_norm_reference(x, shift, scale, eps=1e-6, out_dtype=jnp.bfloat16))
print("ok")
"""


def test_pallas_needs_no_enable_call():
  """A fresh process that never imports liveedit_kernels: attention and the fused norms with impl "pallas" load
  the dispatch on first use (and, off GPU, give the reference exactly)."""
  seed = random.SystemRandom().randrange(2**31)
  done = subprocess.run([sys.executable, "-c", PALLAS_WITHOUT_ENABLE, str(seed)], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0 and done.stdout.strip() == "ok", f"seed {seed}: {done.stderr[-2000:]}"


def test_dit_config_selects_pallas():
  """DiTConfig(kernels="pallas") runs the chunk-causal DiT through the registered implementation."""
  seed = random.SystemRandom().randrange(2**31)
  rng = np.random.default_rng(seed)
  cfg = DiTConfig.preset("tiny")
  params = init_dit_params(cfg, jax.random.key(seed))
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 4, cfg.in_channels)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, cfg.text_len, cfg.text_dim)), jnp.float32)
  t = jnp.asarray([500.0])
  run = jax.jit(lambda c, *a: dit_forward(c, *a, chunk_frames=2), static_argnums=0)
  np.testing.assert_array_equal(run(DiTConfig.preset("tiny", kernels="pallas"), params, x, t, ctx),
                                run(cfg, params, x, t, ctx), err_msg=f"seed {seed}")


def test_bench_smoke(tmp_path):
  """`python -m liveedit_kernels.bench --interpret --small` on one case: the kernel runs, matches XLA,
  the table is written."""
  out = tmp_path / "table.json"
  results = bench.main(["--interpret", "--small", "--iters", "1", "--only", "chunk_causal fwd+bwd",
                        "--write-table", str(out)])
  row = results["chunk_causal fwd+bwd"]["triton"]
  assert "error" not in row and row["rel_err_vs_xla"] <= BF16_RTOL
  assert "error" in results["chunk_causal fwd+bwd"]["cudnn"]  # no cuDNN on CPU, reported, not raised
  assert set(dispatch.load_policy(out).ms["chunk_causal"]) == {"xla", "triton"}


def test_dense_xla_baseline_needs_its_logits_in_half_the_device_memory(monkeypatch):
  """The bench's XLA path is skipped (an error row, not a minutes-long compile) where its fp32 logits exceed half of
  the device memory, and built where they fit."""
  case = next(c for c in bench.cases(small=False) if c.name == "chunk_causal fwd")
  logit_bytes = 4 * case.heads * case.t * case.s
  device = jax.devices()[0]
  for limit, runs in ((2 * logit_bytes - 1, False), (2 * logit_bytes, True)):
    monkeypatch.setattr(type(device), "memory_stats", lambda self, limit=limit: {"bytes_limit": limit})
    if runs:
      assert callable(bench._xla_attention(case, None))
    else:
      with pytest.raises(NotImplementedError, match=f"{logit_bytes / 2**30:.0f} GiB of logits"):
        bench._xla_attention(case, None)


def test_time_interleaved_alternates_the_functions():
  """Every round calls each function once, the order rotated by one per round; a function's times are its own."""
  calls = []

  def recorder(name, seconds):
    def fn(x):
      calls.append(name)
      time.sleep(seconds)
      return x
    return fn

  fns = {"a": recorder("a", 0.0), "b": recorder("b", 0.02), "c": recorder("c", 0.0)}
  timings = time_interleaved(fns, jnp.zeros(3), warmup=1, iters=4)
  assert calls == list("abc" "abc" "bca" "cab" "abc")
  assert timings["b"]["min_ms"] >= 20.0 > timings["a"]["min_ms"]
  assert all(t["min_ms"] <= t["median_ms"] and t["iters"] == 4 for t in timings.values())


def test_tokamax_shim_renames_the_old_pallas_keywords(monkeypatch):
  """tokamax 0.0.12 passes out_shape / scratch_shapes to plgpu.kernel; on a JAX without them the bench renames."""
  from jax.experimental.pallas import mosaic_gpu as plgpu
  seen = {}

  def new_kernel(body, *, out_type=None, scratch_types=None, **mesh_kwargs):
    seen.update(body=body, out_type=out_type, scratch_types=scratch_types, **mesh_kwargs)

  monkeypatch.setattr(plgpu, "kernel", new_kernel)
  bench._tokamax_on_new_pallas()
  plgpu.kernel("body", out_shape="o", scratch_shapes="s", grid=(2,))
  assert seen == {"body": "body", "out_type": "o", "scratch_types": "s", "grid": (2,)}
  renamed = plgpu.kernel
  bench._tokamax_on_new_pallas()
  assert plgpu.kernel is renamed, "wrapped twice"
