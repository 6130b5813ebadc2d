"""Analytic FLOP counts of the training steps, for MFU.

Counted: every matmul and both attention matmuls (QKᵀ and PV) at 2 FLOPs per multiply-add, only over the
query-key pairs a mask lets through. Not counted: norms, softmax, RoPE, elementwise ops, and the forwards that
rematerialisation repeats, so MFU is model FLOPs utilisation. A backward pass costs twice its forward.

The compiled step's own `cost_analysis()` is no substitute: XLA counts the body of a `lax.scan` once, not once per
layer, and skips the dynamic-trip-count rollout loop.
"""

from __future__ import annotations

import jax

from liveedit_jax.attention import AttentionMask
from liveedit_jax.config import DiTConfig
from train.configs import TrainConfig

# Dense bf16 tensor-core peaks per device (vendor datasheets, SXM parts), TFLOP/s.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "B200": 2250.0}


def dit_forward_flops(config: DiTConfig, batch: int, query_tokens: int, attended_pairs: int,
                      with_text: bool = True) -> float:
  """FLOPs of one DiT forward over `query_tokens` tokens per sample seeing `attended_pairs` (query, key) pairs in
  self-attention; with_text adds the text embedding and the per-layer text K/V projections."""
  d, f, n_layers = config.dim, config.ffn_dim, config.num_layers
  lt = config.text_len
  pt, ph, pw = config.patch_size
  per_token_layer = 2 * (4 * d * d + 2 * d * d + 2 * d * f) + 4 * lt * d  # SA qkvo, CA q/o, FFN, CA scores+PV
  patch = pt * ph * pw
  flops = query_tokens * (n_layers * per_token_layer + 2 * d * patch * (config.in_channels + config.latent_channels))
  flops += n_layers * 4 * attended_pairs * d  # self-attention scores and PV over the visible pairs
  if with_text:
    flops += 2 * lt * (config.text_dim * d + d * d) + n_layers * 4 * lt * d * d
  return float(batch * flops)


def _forwards(config: TrainConfig) -> tuple[DiTConfig, int, int]:
  """(the DiT, tokens per clip, tokens per chunk) of `config`'s clips."""
  dit = config.dit()
  _, ph, pw = dit.patch_size
  frame_tokens = (config.height // ph) * (config.width // pw)
  return dit, config.frames * frame_tokens, config.chunk_frames * frame_tokens


def bidirectional_step_flops(config: TrainConfig, b: int) -> dict[str, float]:
  """Stage 1, for `b` samples: a forward and its backward over the whole clip."""
  dit, tokens, _ = _forwards(config)
  return {"step": 3 * dit_forward_flops(dit, b, tokens, tokens * tokens)}


def teacher_forcing_step_flops(config: TrainConfig, b: int) -> dict[str, float]:
  """Stage 2: over [clean ‖ noisy], twice the tokens under the teacher-forcing mask."""
  dit, tokens, chunk_tokens = _forwards(config)
  pairs = AttentionMask("teacher_forcing", chunk_tokens).visible_pairs(2 * tokens, 2 * tokens)
  return {"step": 3 * dit_forward_flops(dit, b, 2 * tokens, pairs)}


def dmd_step_flops(config: TrainConfig, b: int) -> dict[str, float]:
  """Stage 3: {"step": the average step, "generator": the generator's update alone, "critic": the critic's}.

  Averages over the exit step (E[k*] = (steps − 1)/2, so a chunk runs E[k*] + 2 rollout forwards with the
  refresh) and over the generator's turn (1 step in gen_every).
  """
  dit, tokens, chunk_tokens = _forwards(config)
  causal_pairs = AttentionMask("chunk_causal", chunk_tokens).visible_pairs(tokens, tokens)
  full = dit_forward_flops(dit, b, tokens, tokens * tokens)
  causal = dit_forward_flops(dit, b, tokens, causal_pairs)
  rollout_forwards = (len(config.timesteps) - 1) / 2 + 2
  rollout = rollout_forwards * dit_forward_flops(dit, b, tokens, causal_pairs, with_text=False)
  rollout += dit_forward_flops(dit, b, 0, 0)  # the text K/V, once per rollout
  real = (2 if config.guidance else 1) * full
  generator = rollout + 3 * causal + real + full
  critic = rollout + 3 * full
  return {"step": critic + generator / config.gen_every, "generator": generator, "critic": critic}


def peak_flops_per_device(config: TrainConfig) -> float | None:
  """`config.peak_tflops`, else the table's entry for the device kind; None when unknown (CPU)."""
  if config.peak_tflops:
    return config.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in kind), None)
