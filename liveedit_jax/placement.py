"""Which device runs which stage of the stream (`python -m liveedit_jax.stream --devices N`).

    placement = plan(2)                                        # the autoencoders on jax.devices()[0], the DiT on [1]
    params = born_on(placement.dit, lambda: load_dit(path)[1])  # created on the DiT's device, committed to it
    latents_on_dit = jax.device_put(latents, placement.dit)     # a device-to-device copy, asynchronous

A stage's arrays (params, state, inputs) are committed to its device, so its jitted step runs there; a stage's
output crosses to the next stage's device by `jax.device_put`, which JAX copies device to device, dispatched
asynchronously like any computation. Nothing here waits for the device: with the autoencoders and the DiT on two
devices, the host dispatches chunk k + 1's encode while chunk k is denoised, and each device runs its queue as its
inputs become ready (`Placement.pipelined`; the order is `stream.run_stream`'s).

Layouts: `devices=1`, every stage on the first device (the stream before this module); `devices=2`, the encoder and
the decoder on the first device, the DiT on the second. Encode and decode share a device because together they
cost about what the DiT costs on an H200 (Wan's VAE 6.2 + 10.1 ms a frame, 196 ms per 12-frame chunk, against the
DiT's 217 ms with the mask cache, docs/benchmarks.md), so two devices balance the stages and a third for the
decoder alone would leave the DiT the bound. More devices would have to split the DiT; that is not built: its 5
forwards per chunk run one after another (each takes the last one's output, and chunk k + 1's first forward attends
to chunk k's refreshed KV cache), so a split of its layers over devices leaves all but one idle, and a pipeline of
its denoising steps (StreamDiffusionV2's) lets chunk k + 1 attend to a cache that is one chunk older, another
output than one device's.

Several hosts (`jax.distributed.initialize()` in one process per host) are not handled: a process can commit
arrays only to its own devices (`jax.local_devices()`), so the stages would have to be one SPMD program over a mesh
spanning the hosts, the latents crossing by a collective inside it, every process running the same loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, TypeVar

import jax

# The --devices values with a layout, each the number of devices it uses.
LAYOUTS = (1, 2)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Placement:
  """The device of each stage: `autoencoder` encodes and decodes, `dit` runs the stream step (prompt switches,
  history pushes and mask statistics included: they read the DiT's state)."""

  autoencoder: jax.Device
  dit: jax.Device

  @property
  def pipelined(self) -> bool:
    """Whether the stages run on different devices, so that they can overlap."""
    return self.autoencoder != self.dit



def plan(devices: int, available: Sequence[jax.Device] | None = None) -> Placement:
  """The layout of `devices` devices (one of LAYOUTS) over `available` (default: `jax.devices()`); a ValueError, in
  one line naming both numbers, when fewer are available."""
  available = jax.devices() if available is None else available
  if devices > len(available):  # first: more devices than there are is the mistake to name, whatever the layouts
    raise ValueError(f"--devices {devices}: JAX sees {len(available)} {available[0].platform} device"
                     f"{'s' if len(available) > 1 else ''} here")
  if devices not in LAYOUTS:
    raise ValueError(f"--devices must be one of {', '.join(map(str, LAYOUTS))} (more would split the DiT, which is "
                     f"not built), got {devices}")
  return Placement(autoencoder=available[0], dit=available[devices - 1])


def born_on(device: jax.Device, make: Callable[[], T]) -> T:
  """`make()`, a pytree, its arrays created on `device` (the default device meanwhile, so that nothing is built
  elsewhere and copied) and committed to it, so that the jitted steps taking them run there; leaves that are not
  arrays (a config) are returned as they are."""
  with jax.default_device(device):
    made = make()
  return jax.tree.map(lambda a: jax.device_put(a, device) if isinstance(a, jax.Array) else a, made)


def abstract(tree: Any, device: jax.Device) -> Any:
  """`tree`'s arrays (or ShapeDtypeStructs) as ShapeDtypeStructs on `device`, for lowering a step that runs there."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
