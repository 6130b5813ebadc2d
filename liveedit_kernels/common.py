"""What the kernels in `liveedit_kernels/` share: the Triton backend and jax-triton imports, padding, output poisoning.

The Pallas Triton backend (`jax.experimental.pallas.triton`) is present in JAX 0.10 and 0.11; 0.11 deprecates it.
A `pallas_call` runs on it when given its `CompilerParams`; without them JAX ≥ 0.9 would pick Mosaic GPU.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_POISON = [False]


def triton_backend() -> ModuleType:
  """`jax.experimental.pallas.triton`, or an ImportError that names the JAX version and what to do."""
  try:
    from jax.experimental.pallas import triton
  except ImportError as e:  # removed after the 0.11 deprecation
    raise ImportError(
        f"kernels need the Pallas Triton backend (jax.experimental.pallas.triton, JAX 0.10–0.11); JAX "
        f"{jax.__version__} does not provide it. Use implementation='xla' (or 'cudnn' through "
        f"liveedit_jax.attention), or install a JAX that still ships it.") from e
  return triton


def with_reference_gradient(kernel: Callable[..., Any], reference: Callable[..., Any]) -> Callable[..., Any]:
  """`kernel(*arrays)` (a kernel call without autodiff) differentiated as `reference(*arrays)`: the backward pass is
  XLA's gradient of the reference, recomputed from the inputs (`jax.custom_vjp`). Bind static arguments first
  (`functools.partial`)."""
  @jax.custom_vjp
  def fn(*arrays):
    return kernel(*arrays)

  fn.defvjp(lambda *arrays: (kernel(*arrays), arrays), lambda arrays, d_out: jax.vjp(reference, *arrays)[1](d_out))
  return fn


def jax_triton_modules(op: str) -> tuple[ModuleType, ModuleType, ModuleType]:
  """(jax_triton, triton, triton.language) for the jax-triton kernels, or an ImportError naming `op` and the fix
  (they are the optional `gpu` extra: jax-triton needs JAX ≥ 0.11)."""
  try:
    import jax_triton
    import triton
    import triton.language as tl
  except ImportError as e:
    raise ImportError(f"{op}(implementation='triton') needs jax-triton (pip install -e '.[gpu]', JAX ≥ 0.11); "
                      "use implementation='xla'") from e
  return jax_triton, triton, tl


def interpret_default() -> bool:
  """Kernels run compiled on a GPU and in Pallas interpret mode everywhere else."""
  return jax.default_backend() != "gpu"


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
  """Inside this context (at trace time), every kernel output starts as NaN, so an element a kernel fails to write
  shows up as NaN instead of stale memory. For tests; it costs a fill and an aliased copy per output."""
  _POISON[0] = True
  try:
    yield
  finally:
    _POISON[0] = False


def outputs_poisoned() -> bool:
  """Whether kernels are being traced inside `poisoned_outputs()`."""
  return _POISON[0]


def pallas_call(kernel: Callable[..., None], *, out_shape: Sequence[jax.ShapeDtypeStruct], interpret: bool,
                compiler_params: Any, aliases: dict[int, int] | None = None, **kwargs: Any) -> Callable[..., Any]:
  """`pl.pallas_call` with NaN-filled aliased outputs under `poisoned_outputs()`.

  aliases: {input index: output index} kept as is (e.g. a cache buffer the kernel updates in place); they are
  never poisoned.
  """
  aliases = dict(aliases or {})
  if not _POISON[0]:
    return pl.pallas_call(kernel, out_shape=list(out_shape), interpret=interpret, compiler_params=compiler_params,
                          input_output_aliases=aliases, **kwargs)
  aliased_outputs = set(aliases.values())
  poison = [i for i in range(len(out_shape)) if i not in aliased_outputs]
  in_specs = kwargs.pop("in_specs")
  out_specs = kwargs["out_specs"]

  def call(*args):
    n = len(args)
    extra = [jnp.full(out_shape[i].shape, jnp.nan if jnp.issubdtype(out_shape[i].dtype, jnp.floating) else -1,
                      out_shape[i].dtype) for i in poison]
    kernel_with_poison = lambda *refs: kernel(*refs[:n], *refs[n + len(extra):])  # noqa: E731
    return pl.pallas_call(kernel_with_poison, out_shape=list(out_shape), interpret=interpret,
                          compiler_params=compiler_params, in_specs=[*in_specs, *(out_specs[i] for i in poison)],
                          input_output_aliases={**aliases, **{n + j: i for j, i in enumerate(poison)}},
                          **kwargs)(*args, *extra)

  return call


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, length: int) -> jax.Array:
  """x zero-padded along `axis` to `length` (no copy when already that long)."""
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths)
