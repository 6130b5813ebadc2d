"""Benchmark of the kernels beside cuDNN, tokamax and XLA at the model's shapes: `python -m liveedit_kernels.bench`.

    python -m liveedit_kernels.bench                                          # GPU: all cases, JSON lines, then a table
    python -m liveedit_kernels.bench --write-table liveedit_kernels/measured_h100.json # and record the dispatch table
    python -m liveedit_kernels.bench --sweep                                  # and a block-size sweep (chunk-causal)
    python -m liveedit_kernels.bench --interpret --small                      # CPU smoke test: interpret mode,
                                                                              # tiny shapes

Implementations: ours ("hopper": liveedit_kernels.hopper_attention, sm90 only; "triton":
liveedit_kernels.flash_attention, and the jax-triton kernels liveedit_kernels.adaln and liveedit_kernels.rms_norm_rope
for the memory-bound cases) beside cuDNN, tokamax and XLA; `--impls hopper,cudnn` runs a subset.

Shapes (B = 1, 12 heads, head dim 128, bf16; one chunk C = 4,680 tokens = 3 latent frames at 480×832):
chunk-causal at 32,760 tokens and teacher forcing at 65,520, forward and forward+backward; a streaming chunk of
4,680 queries against 14,040 and 32,760 keys, and against a 32,760-key buffer with 14,040 valid; text
cross-attention 32,760 × 512; routed attention with 30 % of a chunk's queries active against 14,040 keys; the
adaLN modulation and the RMSNorm + RoPE of q (or k) of 32,760 tokens × 1,536 (memory-bound: GB/s instead of TFLOP/s, 32
applications on distinct inputs per timed call).

FLOPs are exact for the mask: 4 · (visible query-key pairs) · N · E for the forward, 3.5× that for
forward+backward. The implementations of a case are timed in alternation (round i calls each once, the order
rotated by i), so that all meet the same clocks of a GPU held at its power limit; times are the minimum of --iters
synchronised calls after 2 warm-up rounds, and the median is printed too. Each case runs in its own try/except: a
failure (an OOM of the dense XLA path, a missing tokamax) is printed as that case's error and the others go on.
Outputs are compared with the first baseline that ran (cuDNN, else XLA).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import json
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp

from liveedit_jax import cli
from liveedit_jax.attention import FULL, AttentionMask, attention
from liveedit_jax.bench.timing import time_interleaved
from liveedit_kernels import adaln, common, dispatch, rms_norm_rope
from liveedit_kernels.flash_attention import SMALL_BLOCKS, BlockSizes, flash_attention
from liveedit_kernels.hopper_attention import HopperBlocks, hopper_attention
from liveedit_kernels.routed_attention import routed_attention, routed_attention_reference

BASELINES = ("cudnn", "tokamax_mosaic", "xla")
OURS = ("hopper", "triton")  # the kernels of liveedit_kernels/


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  kind: str  # "attention", "routed", or a memory-bound op: "adaln", "rms_norm_rope"
  table_case: str | None = None  # the dispatch case this measurement ranks (--write-table)
  mask: AttentionMask = FULL
  t: int = 0  # queries (tokens for the memory-bound ops)
  s: int = 0  # keys
  grad: bool = False  # forward+backward
  kv_valid: int | None = None  # valid keys of a fixed-size buffer
  active: int = 0  # routed: active queries
  heads: int = 12
  head_dim: int = 128
  width: int = 1536  # memory-bound ops
  frames: int = 21  # adaln
  repeats: int = 1  # applications per timed call, each on its own inputs (reported times are per application)

  @property
  def memory_bound(self) -> bool:
    return self.kind in ("adaln", "rms_norm_rope")

  @property
  def flops(self) -> float | None:
    if self.memory_bound:
      return None
    if self.kind == "routed":
      pairs = self.active * self.s
    elif self.kv_valid is not None:
      pairs = self.t * self.kv_valid
    else:
      pairs = self.mask.visible_pairs(self.t, self.s)
    return 4.0 * pairs * self.heads * self.head_dim * (3.5 if self.grad else 1.0)

  @property
  def bytes(self) -> float | None:
    """The bytes a memory-bound op must move. adaln: fp32 in, bf16 out, per-frame shift and scale; rms_norm_rope:
    bf16 in and out, per-token cos and sin."""
    if self.kind == "adaln":
      return self.t * self.width * (4 + 2) + 2 * self.frames * self.width * 4
    if self.kind == "rms_norm_rope":
      return self.t * (self.width * (2 + 2) + 2 * (self.head_dim // 2) * 4)
    return None


def cases(small: bool) -> list[Case]:
  c, n, e = (40, 2, 64) if small else (4680, 12, 128)
  dims = dict(heads=n, head_dim=e)
  cc, tf = AttentionMask("chunk_causal", c), AttentionMask("teacher_forcing", c)
  text = 24 if small else 512
  return [
      Case("chunk_causal fwd", "attention", None, cc, 7 * c, 7 * c, **dims),
      Case("chunk_causal fwd+bwd", "attention", "chunk_causal", cc, 7 * c, 7 * c, grad=True, **dims),
      Case("teacher_forcing fwd", "attention", None, tf, 14 * c, 14 * c, **dims),
      Case("teacher_forcing fwd+bwd", "attention", "teacher_forcing", tf, 14 * c, 14 * c, grad=True, **dims),
      Case("stream 1x3 chunks", "attention", "full", FULL, c, 3 * c, **dims),
      Case("stream 1x7 chunks", "attention", None, FULL, c, 7 * c, **dims),
      Case("stream buffer 7, valid 3", "attention", "full_kv_length", FULL, c, 7 * c, kv_valid=3 * c, **dims),
      Case("cross-attention", "attention", "cross", FULL, 7 * c, text, **dims),
      Case("routed 30%", "routed", "routed", FULL, c, 3 * c, active=int(0.3 * c), **dims),
      Case("adaln", "adaln", "adaln", t=3 * 10 if small else 21 * 1560, frames=3 if small else 21,
           width=96 if small else 1536, repeats=2 if small else 32),
      Case("rms_norm_rope", "rms_norm_rope", "rms_norm_rope", t=3 * 10 if small else 21 * 1560,
           width=n * e, repeats=2 if small else 32, **dims),
  ]


def _tokamax_attention(case: Case, kv_length):
  """tokamax's Mosaic GPU kernel; chunk-causal through its per-row k_end mask (a private field of tokamax's
  attention, not its public API)."""
  import tokamax
  from absl import flags
  if not flags.FLAGS.is_parsed():  # tokamax reads absl flags, which would otherwise parse (and reject) our argv
    flags.FLAGS.mark_as_parsed()
  _tokamax_on_new_pallas()
  if case.mask.kind == "full":
    return lambda q, k, v: tokamax.dot_product_attention(q, k, v, key_value_seq_lengths=kv_length,
                                                         implementation="mosaic")
  if case.mask.kind != "chunk_causal":
    raise NotImplementedError("tokamax's Mask holds one key interval per row; teacher forcing needs two")
  from tokamax._src.ops.attention import api, base
  impl = api.IMPLEMENTATIONS["mosaic"] if "mosaic" in api.IMPLEMENTATIONS else api.IMPLEMENTATIONS["mosaic_gpu"]
  # its kernel needs the length to be a multiple of its 128-row block: pad, padding rows see the real keys only
  padded = common.round_up(case.t, 128)
  k_end = jnp.asarray(case.mask.row_intervals(case.t, case.s)[:, 1])
  k_end = jnp.concatenate([k_end, jnp.full((padded - case.t,), case.s, k_end.dtype)])

  def attend(q, k, v):
    q, k, v = (common.pad_axis(x, 1, padded) for x in (q, k, v))
    return impl(q, k, v, mask=base.Mask(k_end=k_end))[:, :case.t]

  return attend


def _tokamax_on_new_pallas() -> None:
  """tokamax 0.0.12 (the latest release) calls `plgpu.kernel(out_shape=..., scratch_shapes=...)`; JAX 0.11 names
  these out_type and scratch_types. Renames them where the installed JAX lacks the old names."""
  from jax.experimental.pallas import mosaic_gpu as plgpu
  if "out_shape" in inspect.signature(plgpu.kernel).parameters or getattr(plgpu.kernel, "renames_old_names", False):
    return
  kernel = plgpu.kernel

  def renamed(*args, **kwargs):
    for old, new in (("out_shape", "out_type"), ("scratch_shapes", "scratch_types")):
      if old in kwargs:
        kwargs[new] = kwargs.pop(old)
    return kernel(*args, **kwargs)

  renamed.renames_old_names = True
  plgpu.kernel = renamed


def attention_fns(case: Case, kv_length, interpret: bool, blocks: BlockSizes) -> dict[str, Callable[[], Callable]]:
  """impl → a builder of f(q, k, v) -> out (builders run inside the per-case try)."""
  mask = case.mask
  fns = {
      "triton": lambda: lambda q, k, v: flash_attention(q, k, v, mask, kv_length, block_sizes=blocks,
                                                        interpret=interpret),
      "cudnn": lambda: lambda q, k, v: attention(q, k, v, mask=mask, kv_length=kv_length, impl="cudnn"),
      "tokamax_mosaic": lambda: _tokamax_attention(case, kv_length),
      "xla": lambda: _xla_attention(case, kv_length),
  }
  if kv_length is None and not interpret:  # the Mosaic GPU kernel: static masks, compiled for sm90
    fns["hopper"] = lambda: lambda q, k, v: hopper_attention(q, k, v, mask)
  return fns


_DEFAULT_MEMORY = 120 * 2**30  # where the backend reports no memory limit (CPU)


def _xla_attention(case: Case, kv_length):
  """The dense XLA path, where its [N, T, S] float32 logits (and their gradient) take at most half of the device
  memory: on an 80 GB H100 (59 GiB for JAX) XLA compiled the 48 GiB of chunk-causal logits for over five minutes
  (docs/benchmarks.md, sixth session), on an H200 (104 GiB) it runs them in 70 ms."""
  logit_bytes = 4 * case.heads * case.t * case.s * (3 if case.grad else 1)
  limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", _DEFAULT_MEMORY)
  if logit_bytes > limit / 2:
    raise NotImplementedError(f"dense XLA attention would need {logit_bytes / 2**30:.0f} GiB of logits, more than "
                              f"half of the device's {limit / 2**30:.0f} GiB")
  return lambda q, k, v: attention(q, k, v, mask=case.mask, kv_length=kv_length, impl="xla")


def routed_fns(interpret: bool, blocks: BlockSizes) -> dict[str, Callable[[], Callable]]:
  def cudnn(q, k, v, idx, cache):
    batch = jnp.arange(q.shape[0])[:, None]
    out = attention(q[batch, idx], k, v, impl="cudnn")
    return cache.at[batch, idx].set(out)

  return {
      "triton": lambda: lambda *x: routed_attention(*x, block_sizes=blocks, interpret=interpret),
      "cudnn": lambda: cudnn,
      "xla": lambda: routed_attention_reference,
  }


def memory_bound_fns(case: Case) -> dict[str, Callable[[], Callable]]:
  """f(*lists): the op once per entry of its argument lists (R applications on R distinct inputs in one call, so
  the per-call dispatch, about as long as one ~0.1 ms application, does not swamp it, and nothing is loop-invariant
  for XLA to hoist)."""
  if case.kind == "adaln":
    op = adaln.modulated_layer_norm
  else:
    op = functools.partial(rms_norm_rope.rms_norm_rope, num_heads=case.heads)

  def repeated(impl):
    one = functools.partial(op, implementation=impl)
    return lambda *lists: [one(*args) for args in zip(*lists)]

  return {impl: (lambda impl=impl: repeated(impl)) for impl in ("triton", "xla")}


def inputs(case: Case, key: jax.Array) -> tuple[Any, ...]:
  ks = jax.random.split(key, 5)
  bf16 = jnp.bfloat16
  if case.memory_bound:
    return tuple(map(list, zip(*(_memory_bound_inputs(case, kk) for kk in jax.random.split(key, case.repeats)))))
  shape = lambda length: (1, length, case.heads, case.head_dim)  # noqa: E731
  q = jax.random.normal(ks[0], shape(case.t), bf16)
  k, v = (jax.random.normal(kk, shape(case.s), bf16) for kk in ks[1:3])
  if case.kind == "routed":
    idx = jax.random.permutation(ks[3], case.t)[:case.active][None].astype(jnp.int32)
    return q, k, v, idx, jnp.zeros_like(q)
  if case.grad:
    return q, k, v, jax.random.normal(ks[4], shape(case.t), bf16)
  return q, k, v


def _memory_bound_inputs(case: Case, key: jax.Array) -> tuple[jax.Array, ...]:
  """One application's inputs: adaln (x, shift, scale); rms_norm_rope (x, scale, cos, sin)."""
  ks = jax.random.split(key, 4)
  if case.kind == "adaln":
    x = jax.random.normal(ks[0], (1, case.frames, case.t // case.frames, case.width), jnp.float32)
    shift, scale = (0.1 * jax.random.normal(kk, (1, case.frames, 1, case.width), jnp.float32) for kk in ks[1:3])
    return x, shift, scale
  x = jax.random.normal(ks[0], (1, case.t, case.width), jnp.bfloat16)
  scale = 1 + 0.1 * jax.random.normal(ks[1], (case.width,), jnp.float32)
  angle = jax.random.uniform(ks[2], (case.t, case.head_dim // 2), jnp.float32, 0, 6.3)
  return x, scale, jnp.cos(angle), jnp.sin(angle)


def _jitted(case: Case, fn: Callable) -> Callable:
  if case.grad:
    return jax.jit(lambda q, k, v, d_out: jax.vjp(fn, q, k, v)[1](d_out))
  return jax.jit(fn)


def _rel_err(got, want) -> float:
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  errs = [float(jnp.linalg.norm((g.astype(jnp.float32) - w.astype(jnp.float32)).ravel())
                / jnp.maximum(jnp.linalg.norm(w.astype(jnp.float32).ravel()), 1e-30)) for g, w in zip(got, want)]
  return max(errs)


def _error(row: dict[str, Any], e: Exception) -> None:
  row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
  if not isinstance(e, (ImportError, NotImplementedError)):
    traceback.print_exc(file=sys.stderr)


def run_case(case: Case, fns: dict[str, Callable[[], Callable]], args: tuple, iters: int, emit) -> dict[str, dict]:
  """Compiles each implementation and checks it against the first baseline that runs, then times all of them in
  alternation (`time_interleaved`: every implementation meets the same GPU clocks)."""
  results: dict[str, dict] = {}
  compiled: dict[str, Callable] = {}
  reference = None
  for impl in [i for i in ("cudnn", "xla") if i in fns] + [i for i in fns if i not in ("cudnn", "xla")]:
    row: dict[str, Any] = {"case": case.name, "impl": impl}
    results[impl] = row
    try:
      fn = _jitted(case, fns[impl]())
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      row["compile_s"] = round(time.perf_counter() - start, 2)
      if reference is None:
        reference = (impl, out)
      else:
        row["rel_err_vs_" + reference[0]] = float(f"{_rel_err(out, reference[1]):.3g}")
      del out
      compiled[impl] = fn
    except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
      _error(row, e)
      emit(row)
  del reference
  try:
    timings = time_interleaved(compiled, *args, iters=iters) if compiled else {}
  except Exception as e:  # noqa: BLE001
    for impl in compiled:
      _error(results[impl], e)
    timings = {}
  for impl, timing in timings.items():
    row = results[impl]
    ms, ms_median = timing["min_ms"] / case.repeats, timing["median_ms"] / case.repeats
    row["ms"], row["ms_median"] = round(ms, 4), round(ms_median, 4)
    if case.flops is not None:
      row["tflops"] = float(f"{case.flops / (ms * 1e-3) / 1e12:.4g}")
    if case.bytes is not None:
      row["gbps"] = float(f"{case.bytes / (ms * 1e-3) / 1e9:.4g}")
  for impl in compiled:
    emit(results[impl])
  return results


SWEEP = [
    BlockSizes(block_q=128, block_k=64, num_warps=8, num_stages=3),
    BlockSizes(block_q=128, block_k=128, num_warps=8, num_stages=2),
    BlockSizes(block_q=64, block_k=64, num_warps=4, num_stages=3),
    BlockSizes(block_q=128, block_k=32, num_warps=4, num_stages=4),
    BlockSizes(block_q_dq=64, block_kv_dq=64, block_q_dkv=64, block_kv_dkv=64, num_warps_bwd=4),
    BlockSizes(block_q_dq=128, block_kv_dq=64, block_q_dkv=64, block_kv_dkv=128, num_warps_bwd=8),
    BlockSizes(block_q_dq=64, block_kv_dq=32, block_q_dkv=32, block_kv_dkv=64, num_warps_bwd=4, num_stages_bwd=3),
]


HOPPER_SWEEP = [HopperBlocks(block_kv=64, stages=4)]  # slower on the H200 (docs/benchmarks.md); for other GPUs


def table(all_results: dict[str, dict[str, dict]]) -> str:
  impls = [*OURS, *BASELINES]
  lines = [f"{'case':28s}" + "".join(f"{i:>22s}" for i in impls) + f"{'ours vs best':>16s}"]
  for name, results in all_results.items():
    cells = []
    for impl in impls:
      r = results.get(impl)
      if r is None:
        cells.append(f"{'-':>22s}")
      elif "error" in r:
        cells.append(f"{'error':>22s}")
      else:
        extra = f" ({r['tflops']:.0f} TF/s)" if "tflops" in r else (f" ({r['gbps']:.0f} GB/s)" if "gbps" in r else "")
        cells.append(f"{r['ms']:>10.3f} ms{extra:>10s}")
    ours, best = _best(results, OURS), _best(results, BASELINES)
    speedup = f"{best / ours:.2f}x" if ours and best else "-"
    lines.append(f"{name:28s}" + "".join(cells) + f"{speedup:>16s}")
  return "\n".join(lines)


def _selected(fns: dict[str, Callable], impls: str) -> dict[str, Callable]:
  """The entries of `fns` whose implementation (the name's first word) is in the comma-separated `impls`; all if
  `impls` is empty."""
  wanted = impls.split(",")
  return {name: fn for name, fn in fns.items() if not impls or name.split()[0] in wanted}


def _best(results: dict[str, dict], impls, key: str = "ms") -> float | None:
  """The fastest time (`key`: "ms", the minimum, or "ms_median") among `impls` in one case's results."""
  times = [r[key] for i, r in results.items() if i in impls and key in r]
  return min(times) if times else None


def targets(all_results: dict[str, dict[str, dict]]) -> list[str]:
  """The issue's targets: chunk-causal fwd+bwd ≥ 1.15× the best other path (judged on both the minimum and the
  median time); ≥ 600 TFLOP/s forward."""
  out = []
  r = all_results.get("chunk_causal fwd+bwd", {})
  ours, best = _best(r, OURS), _best(r, BASELINES)
  ours_median, best_median = _best(r, OURS, "ms_median"), _best(r, BASELINES, "ms_median")
  if ours and best and ours_median and best_median:
    by_min, by_median = best / ours, best_median / ours_median
    out.append(f"chunk-causal fwd+bwd: {by_min:.2f}x the best other path by minimum, {by_median:.2f}x by median "
               f"(target ≥ 1.15x): {'met' if min(by_min, by_median) >= 1.15 else 'NOT met'}")
  for name in ("chunk_causal fwd", "teacher_forcing fwd"):
    tf = max((x.get("tflops", 0.0) for i, x in all_results.get(name, {}).items() if i in OURS), default=None)
    if tf:
      out.append(f"{name}: {tf:.0f} TFLOP/s effective (target ≥ 600): {'met' if tf >= 600 else 'NOT met'}")
  return out


def write_table(path: str, all_results: dict[str, dict[str, dict]], case_list: list[Case], command: str) -> None:
  recorded = {}
  for case in case_list:
    if case.table_case is None or case.name not in all_results:
      continue
    ms = {impl: r["ms"] for impl, r in all_results[case.name].items() if "ms" in r}
    shape = (f"{case.t} x {case.width}" if case.memory_bound else
             f"T={case.t}, S={case.s}, N={case.heads}, E={case.head_dim}, mask {case.mask.kind}"
             + (f", {case.kv_valid} valid keys" if case.kv_valid else "")
             + (f", {case.active} active queries" if case.active else ""))
    recorded[case.table_case] = {"pass": "fwd+bwd" if case.grad else "fwd", "shape": shape, "ms": ms}
  doc = {"device": jax.devices()[0].device_kind, "software": f"jax {jax.__version__}",
         "source": f"`{command}` on {datetime.date.today().isoformat()} (minimum of the timed calls)",
         "cases": recorded}
  with open(path, "w") as f:
    json.dump(doc, f, indent=2)
  dispatch.load_policy(path)  # the file must load back


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict]]:
  parser = cli.ArgumentParser(prog="python -m liveedit_kernels.bench", description=__doc__.splitlines()[0])
  parser.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU smoke test)")
  parser.add_argument("--small", action="store_true", help="tiny shapes (with --interpret on CPU)")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--only", default="", help="run only cases whose name contains this")
  parser.add_argument("--impls", default="", help="comma-separated implementations to run (default: all)")
  parser.add_argument("--sweep", action="store_true", help="also time the block sizes in SWEEP (chunk-causal)")
  parser.add_argument("--write-table", default="", help="write the dispatch table (liveedit_kernels/dispatch.py) here")
  args = parser.parse_args(argv)
  blocks = SMALL_BLOCKS if args.small else BlockSizes()
  emit = lambda row: print(json.dumps(row), flush=True)  # noqa: E731
  print(json.dumps({"device": str(jax.devices()[0]), "jax": jax.__version__, "interpret": args.interpret}))
  all_results: dict[str, dict[str, dict]] = {}
  case_list = [c for c in cases(args.small) if args.only in c.name]
  for i, case in enumerate(case_list):
    try:
      call_args = inputs(case, jax.random.key(i))
      kv_length = None if case.kv_valid is None else jnp.asarray([case.kv_valid], jnp.int32)
      if case.kind == "attention":
        fns = attention_fns(case, kv_length, args.interpret, blocks)
      elif case.kind == "routed":
        fns = routed_fns(args.interpret, blocks)
      else:
        fns = memory_bound_fns(case)
      all_results[case.name] = run_case(case, _selected(fns, args.impls), call_args, args.iters, emit)
      if args.sweep and case.mask.kind == "chunk_causal":
        sweep = {f"triton sweep {j} {b}": attention_fns(case, kv_length, args.interpret, b)["triton"]
                 for j, b in enumerate(SWEEP)}
        sweep.update({f"hopper sweep {j} {b}": (lambda b=b: lambda q, k, v: hopper_attention(q, k, v, case.mask,
                                                                                             blocks=b))
                      for j, b in enumerate(HOPPER_SWEEP)})
        run_case(case, _selected(sweep, args.impls), call_args, args.iters, emit)
      del call_args
    except Exception as e:  # noqa: BLE001
      emit({"case": case.name, "error": f"{type(e).__name__}: {e}"})
  print()
  print(table(all_results))
  for line in targets(all_results):
    print(line)
  if args.write_table:
    write_table(args.write_table, all_results, case_list,
                "python -m liveedit_kernels.bench " + " ".join(argv or sys.argv[1:]))
    print(f"wrote {args.write_table}")
  return all_results


if __name__ == "__main__":
  cli.run(main)
