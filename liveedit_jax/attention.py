"""Attention dispatch: one entry point, several implementations, the chunk-structured masks of this model.

Layouts: q [B, T, N, E], k and v [B, S, N, E]; the output is [B, T, N, E] in q's dtype. Scale 1/√E.

Masks (`AttentionMask`, static) describe the visibility pattern instead of materialising it:
  - `full`: every query sees every key.
  - `chunk_causal`: tokens are grouped in chunks of `chunk_tokens`; a query sees its own chunk and earlier ones.
  - `teacher_forcing`: the sequence is [clean ‖ noisy], each half `T/2` tokens. The clean half is chunk-causal;
    noisy chunk c sees clean chunks < c and itself (Self-Forcing's teacher-forcing mask).
A dynamic `kv_length` ([B] int32) marks keys [0, kv_length) valid (fixed-size caches).

Implementations (`impl`):
  - "xla": einsum + float32 softmax with an explicit boolean mask. The reference; runs anywhere.
  - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`. Chunk masks become a static loop of
    unmasked calls, each query chunk against the keys it sees (`AttentionMask.row_groups`; never a dense mask: a dense cuDNN mask is folded
    into a materialised bias and measured 3.6× slower than this loop on one H100, November 2026).
    `kv_length` maps to cuDNN's padding mask, which skips the invalid tiles.
  - further implementations register with `register_attention_impl`; "pallas" (the kernels of `liveedit_kernels/`)
    is imported, and so registered, the first time it is asked for (`load_impl_family`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
from typing import Callable, Iterator, Literal

import jax
import jax.numpy as jnp
import numpy as np

MaskKind = Literal["full", "chunk_causal", "teacher_forcing"]


@dataclasses.dataclass(frozen=True)
class AttentionMask:
  kind: MaskKind = "full"
  chunk_tokens: int = 0  # tokens per chunk (chunk_frames · tokens per frame) for the chunked kinds

  def __post_init__(self):
    if self.kind not in ("full", "chunk_causal", "teacher_forcing"):
      raise ValueError(f"unknown attention mask kind {self.kind!r}")
    if self.kind != "full" and self.chunk_tokens <= 0:
      raise ValueError(f"mask {self.kind!r} needs chunk_tokens > 0, got {self.chunk_tokens}")

  def row_intervals(self, q_len: int, kv_len: int, xp=np):
    """[q_len, 4] int32: each query row's visible keys as [lo0, hi0) ∪ [lo1, hi1), an empty interval (0, 0).

    The one statement of the masks' geometry: the dense mask, the cuDNN prefix loop and the kernels' tile plans
    (`liveedit_kernels.mask_tiles`) are read off it. Per kind:
      full             [0, S)
      chunk_causal     chunk c: [0, (c+1)·C)
      teacher_forcing  clean chunk c: [0, (c+1)·C); noisy chunk c: [0, c·C) ∪ [T/2 + c·C, T/2 + (c+1)·C)
    each clipped to its half / the sequence. xp: numpy (host constants) or jax.numpy (inside a trace).
    """
    pos = xp.arange(q_len)
    zeros = xp.zeros_like(pos)
    if self.kind == "full":
      return xp.stack([zeros, zeros + kv_len, zeros, zeros], axis=1).astype(xp.int32)
    if q_len != kv_len:
      raise ValueError(f"mask {self.kind!r} needs equal query and key lengths, got {q_len} and {kv_len}")
    c = self.chunk_tokens
    if self.kind == "chunk_causal":
      return xp.stack([zeros, xp.minimum((pos // c + 1) * c, q_len), zeros, zeros], axis=1).astype(xp.int32)
    half = q_len // 2
    if 2 * half != q_len:
      raise ValueError(f"teacher forcing needs an even sequence [clean ‖ noisy], got length {q_len}")
    noisy = pos >= half
    chunk = (pos - noisy * half) // c
    own_end = xp.minimum((chunk + 1) * c, half)
    return xp.stack([zeros, xp.where(noisy, chunk * c, own_end), xp.where(noisy, half + chunk * c, 0),
                     xp.where(noisy, half + own_end, 0)], axis=1).astype(xp.int32)

  def dense(self, q_len: int, kv_len: int, xp=np):
    """The boolean mask [q_len, kv_len] (True = visible), for the reference path and tests.

    xp: numpy (a host constant) or jax.numpy (built from iotas inside a trace, never a large captured constant).
    """
    iv = self.row_intervals(q_len, kv_len, xp)
    keys = xp.arange(kv_len)[None, :]
    return ((keys >= iv[:, 0:1]) & (keys < iv[:, 1:2])) | ((keys >= iv[:, 2:3]) & (keys < iv[:, 3:4]))

  def visible_pairs(self, q_len: int, kv_len: int) -> int:
    """Number of visible (query, key) pairs: the exact FLOP count is 4 · pairs · N · E for the forward."""
    iv = self.row_intervals(q_len, kv_len).astype(np.int64)
    return int(np.sum(iv[:, 1] - iv[:, 0]) + np.sum(iv[:, 3] - iv[:, 2]))

  def row_groups(self, q_len: int, kv_len: int) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """Runs of consecutive query rows that see the same keys: (row start, row stop, the non-empty key intervals)."""
    iv = self.row_intervals(q_len, kv_len)
    starts = [0, *(np.flatnonzero(np.any(np.diff(iv, axis=0) != 0, axis=1)) + 1).tolist()]
    stops = [*starts[1:], q_len]
    return [(a, b, tuple((int(lo), int(hi)) for lo, hi in iv[a].reshape(2, 2) if hi > lo))
            for a, b in zip(starts, stops)]


FULL = AttentionMask()


def resolve_impl(impl: str, dtype: jnp.dtype) -> str:
  """'auto' → 'cudnn' on a GPU with a half-precision compute dtype, else 'xla'."""
  if impl != "auto":
    return impl
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: np.ndarray | jax.Array | None = None,
                        kv_length: jax.Array | None = None) -> jax.Array:
  """Plain XLA attention: logits and softmax in float32, probabilities cast to v's dtype for the PV matmul.

  mask: [T, S] or [B, T, S] boolean (True = visible). kv_length: [B] int32, keys ≥ kv_length masked.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("btne,bsne->bnts", q, k, preferred_element_type=jnp.float32) * scale
  visible = None
  if mask is not None:
    mask = jnp.asarray(mask)
    visible = mask[None, None] if mask.ndim == 2 else mask[:, None]
  if kv_length is not None:
    valid = (jnp.arange(k.shape[1])[None, :] < kv_length[:, None])[:, None, None, :]
    visible = valid if visible is None else visible & valid
  if visible is not None:
    logits = jnp.where(visible, logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  if visible is not None:  # a row with no visible key gives zeros, not NaN
    probs = jnp.where(jnp.any(visible, axis=-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("bnts,bsne->btne", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _cudnn(q, k, v, kv_length=None):
  b = q.shape[0]
  q_len = None if kv_length is None else jnp.full((b,), q.shape[1], jnp.int32)
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", query_seq_lengths=q_len,
                                      key_value_seq_lengths=kv_length)


def _prefix_loop(q, k, v, mask: AttentionMask, attend: Callable) -> jax.Array:
  """Chunk masks as a static loop of unmasked calls: each run of query rows against exactly the keys it sees."""
  outs = []
  for start, stop, intervals in mask.row_groups(q.shape[1], k.shape[1]):
    ks, vs = ([x[:, lo:hi] for lo, hi in intervals] for x in (k, v))
    ks, vs = (xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=1) for xs in (ks, vs))
    outs.append(attend(q[:, start:stop], ks, vs))
  return jnp.concatenate(outs, axis=1)


_EXTRA_IMPLS: dict[str, Callable] = {}
# Families that live in a lower package, which registers them when imported: named here, not imported, because
# that package imports this module (its kernels take `AttentionMask`).
_FAMILY_MODULES = {"pallas": "liveedit_kernels.dispatch"}
_INPUT_SHARDING: contextvars.ContextVar = contextvars.ContextVar("attention_input_sharding", default=None)


@contextlib.contextmanager
def attention_input_sharding(sharding: jax.sharding.Sharding) -> Iterator[None]:
  """While tracing inside this context, q, k and v are constrained to `sharding` (e.g. batch-sharded only).

  cuDNN's partitioner needs q, k and v sharded alike; under FSDP, XLA's propagation can give the text K/V (computed
  from sharded projection weights) another sharding than the video queries. The training step, which owns the
  mesh, installs the batch sharding here; the model itself never names mesh axes.
  """
  token = _INPUT_SHARDING.set(sharding)
  try:
    yield
  finally:
    _INPUT_SHARDING.reset(token)


def load_impl_family(impl: str) -> None:
  """Imports the package that registers implementation family `impl` ("pallas": `liveedit_kernels.dispatch`),
  if it has one and it is not registered yet; `liveedit_jax.fused` shares it."""
  if impl in _FAMILY_MODULES and impl not in _EXTRA_IMPLS:
    importlib.import_module(_FAMILY_MODULES[impl])


def register_attention_impl(name: str, fn: Callable) -> None:
  """Adds an implementation `fn(q, k, v, mask: AttentionMask, kv_length) -> out` (used by `liveedit_kernels/`)."""
  _EXTRA_IMPLS[name] = fn


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: AttentionMask = FULL,
              kv_length: jax.Array | None = None, impl: str = "auto") -> jax.Array:
  """Scaled dot-product attention with a structured mask. See the module docstring for layouts and impls."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention expects q [B, T, N, E] and k, v [B, S, N, E]; got q {q.shape}, k {k.shape}, "
                     f"v {v.shape}")
  if mask.kind != "full" and kv_length is not None:
    raise ValueError("kv_length is only supported with the full mask")
  impl = resolve_impl(impl, q.dtype)
  sharding = _INPUT_SHARDING.get()
  if sharding is not None:
    q, k, v = (jax.lax.with_sharding_constraint(a, sharding) for a in (q, k, v))
  if impl == "xla":
    dense = None if mask.kind == "full" else mask.dense(q.shape[1], k.shape[1], jnp)
    return attention_reference(q, k, v, dense, kv_length)
  if impl == "cudnn":
    if mask.kind == "full":
      return _cudnn(q, k, v, kv_length)
    return _prefix_loop(q, k, v, mask, _cudnn)
  load_impl_family(impl)
  if impl in _EXTRA_IMPLS:
    return _EXTRA_IMPLS[impl](q, k, v, mask, kv_length)
  raise ValueError(f"attention implementation {impl!r} is not available; known: "
                   f"{['xla', 'cudnn', *sorted(_EXTRA_IMPLS)]}")
