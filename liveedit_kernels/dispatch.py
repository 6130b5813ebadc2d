"""The "pallas" implementation family: per case, the fastest path measured on this kind of GPU.

    cfg = DiTConfig.preset("liveedit-1.3b", kernels="pallas")     # imports this module on its first attention call
    liveedit_kernels.dispatch.enable("my_table.json")            # optional: rank by another measurement table

A hand-written kernel earns its place only where it beats what JAX already has, so the choice is data: a table of
measured milliseconds per case and implementation for this kind of GPU (`measured_h200.json` on an H200,
`measured_h100.json` elsewhere; written by `python -m liveedit_kernels.bench --write-table`), and `Policy.choose` takes
the fastest measured implementation that can run the call. An implementation without a measurement is never preferred
over one with a measurement; with none measured, cuDNN (half precision) or XLA runs. Off GPU everything falls back
to the XLA reference.

Implementations: "hopper" (liveedit_kernels.hopper_attention, Mosaic GPU, sm90, static masks), "triton"
(liveedit_kernels.flash_attention; for the fused norms the jax-triton kernels liveedit_kernels.adaln and
liveedit_kernels.rms_norm_rope), "cudnn", "xla".

Cases (the calls the model makes):
  chunk_causal, teacher_forcing   training masks; ranked by forward+backward time
  full                            a streaming chunk against its exact K/V (forward)
  full_kv_length                  a streaming chunk against a fixed-size KV buffer with valid lengths (forward)
  cross                           text cross-attention, ≤ 1,024 keys (forward)
  adaln, rms_norm_rope            liveedit_jax.fused's modulated_layer_norm and rms_norm_rope (the block's
                                  adaLN inputs; its q and k), through `liveedit_kernels.adaln`,
                                  `liveedit_kernels.rms_norm_rope`; ranked by forward time (their backward is XLA's
                                  either way, and measured as fast as XLA's own gradient)
  routed                          not an attention() call: `liveedit_kernels.routed_attention`, for callers that choose
                                  with `policy().choose(...)`
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from liveedit_jax.attention import AttentionMask, attention, register_attention_impl
from liveedit_jax.fused import register_fused_impl
from liveedit_kernels import adaln, rms_norm_rope
from liveedit_kernels.flash_attention import flash_attention
from liveedit_kernels.hopper_attention import hopper_attention

TABLE = Path(__file__).with_name("measured_h100.json")
TABLES = {"H200": Path(__file__).with_name("measured_h200.json"), "H100": TABLE}  # device-kind substring → table
SM90 = ("H100", "H200", "H800", "H20", "GH200")
CASES = ("chunk_causal", "teacher_forcing", "full", "full_kv_length", "cross", "routed", "adaln",
         "rms_norm_rope")
CROSS_MAX_KEYS = 1024


@dataclasses.dataclass(frozen=True)
class Policy:
  """ms: {case: {implementation: measured ms}}."""

  ms: Mapping[str, Mapping[str, float]]

  def choose(self, case: str, candidates: Sequence[str], default: str) -> str:
    """The fastest measured of `candidates` for `case`, else `default`."""
    if case not in CASES:
      raise ValueError(f"unknown case {case!r}; known: {CASES}")
    measured = {impl: ms for impl, ms in self.ms.get(case, {}).items() if impl in candidates}
    return min(measured, key=measured.__getitem__) if measured else default


def load_policy(path: str | Path = TABLE) -> Policy:
  """The policy of a measurement table (an absent file gives a policy with no measurements)."""
  path = Path(path)
  if not path.exists():
    return Policy({})
  cases = json.loads(path.read_text())["cases"]
  unknown = set(cases) - set(CASES)
  if unknown:
    raise ValueError(f"{path}: unknown cases {sorted(unknown)}; known: {CASES}")
  return Policy({case: dict(entry["ms"]) for case, entry in cases.items()})


_ACTIVE: list[Policy] = []


def policy() -> Policy:
  """The policy `enable` installed (this GPU's shipped table if `enable` was not called)."""
  if not _ACTIVE:
    _ACTIVE.append(load_policy(table_for(jax.devices()[0].device_kind)))
  return _ACTIVE[0]


def case_of(mask: AttentionMask, kv_len: int, kv_length) -> str:
  if mask.kind != "full":
    return mask.kind
  if kv_length is not None:
    return "full_kv_length"
  return "cross" if kv_len <= CROSS_MAX_KEYS else "full"


def _candidates(q: jax.Array, mask: AttentionMask, kv_length, device_kind: str) -> list[str]:
  e = q.shape[-1]
  out = ["xla"]
  half = q.dtype in (jnp.bfloat16, jnp.float16)
  if half:
    out.append("cudnn")
  if e >= 16 and not e & (e - 1):
    out.append("triton")
  if (half and any(name in device_kind for name in SM90) and e in (64, 128) and kv_length is None
      and (mask.kind == "full" or mask.chunk_tokens >= 64)):
    out.append("hopper")
  return out


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, kv_length) -> jax.Array:
  """`liveedit_jax.attention.attention(..., impl="pallas")`: the policy's choice for this call."""
  if jax.default_backend() != "gpu":
    return attention(q, k, v, mask=mask, kv_length=kv_length, impl="xla")
  candidates = _candidates(q, mask, kv_length, jax.devices()[0].device_kind)
  default = "cudnn" if "cudnn" in candidates else "xla"
  impl = policy().choose(case_of(mask, k.shape[1], kv_length), candidates, default)
  if impl == "triton":
    return flash_attention(q, k, v, mask, kv_length)
  if impl == "hopper":
    return hopper_attention(q, k, v, mask)
  return attention(q, k, v, mask=mask, kv_length=kv_length, impl=impl)


def _triton_candidates(dtype_ok: bool) -> tuple[str, ...]:
  """The jax-triton kernels run on a GPU with jax-triton installed (the `gpu` extra)."""
  on_gpu = jax.default_backend() == "gpu" and importlib.util.find_spec("jax_triton") is not None
  return ("triton", "xla") if on_gpu and dtype_ok else ("xla",)


def pallas_modulated_layer_norm(x: jax.Array, shift: jax.Array, scale: jax.Array, *, eps: float,
                                out_dtype) -> jax.Array:
  """`liveedit_jax.fused.modulated_layer_norm(..., impl="pallas")`: liveedit_kernels.adaln where measured faster."""
  impl = policy().choose("adaln", _triton_candidates(True), "xla")
  return adaln.modulated_layer_norm(x, shift, scale, eps=eps, out_dtype=out_dtype, implementation=impl)


def pallas_rms_norm_rope(x: jax.Array, scale: jax.Array, cos: jax.Array, sin: jax.Array, *, num_heads: int,
                         eps: float) -> jax.Array:
  """`liveedit_jax.fused.rms_norm_rope(..., impl="pallas")`:
  liveedit_kernels.rms_norm_rope (bf16) where measured faster."""
  impl = policy().choose("rms_norm_rope", _triton_candidates(x.dtype == jnp.bfloat16), "xla")
  return rms_norm_rope.rms_norm_rope(x, scale, cos, sin, num_heads=num_heads, eps=eps, implementation=impl)


def table_for(device_kind: str) -> Path:
  """The shipped measurement table for a device kind (the H100 table when none matches)."""
  return next((path for name, path in TABLES.items() if name in device_kind), TABLE)


def _register() -> None:
  register_attention_impl("pallas", pallas_attention)
  register_fused_impl("pallas", "modulated_layer_norm", pallas_modulated_layer_norm)
  register_fused_impl("pallas", "rms_norm_rope", pallas_rms_norm_rope)


def enable(table: str | Path | None = None) -> Policy:
  """Ranks "pallas" by `table` (default: the shipped table of this GPU) from now on; importing this module has
  registered it with liveedit_jax.attention and liveedit_jax.fused already."""
  _ACTIVE[:] = [load_policy(table_for(jax.devices()[0].device_kind) if table is None else table)]
  _register()
  return _ACTIVE[0]


# "pallas" is registered on import, so `DiTConfig(kernels="pallas")` works without a call to `enable`
# (liveedit_jax.attention imports this module the first time the family is asked for).
_register()
