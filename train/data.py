"""The input pipeline: Grain over latent shards, split by process, emitting global batches on the mesh.

    batches = Batches(config, mesh)
    batch = next(batches)                 # {"source", "target", "context"}: global jax.Arrays, batch axis split
                                          # over ("data", "fsdp")
Grain's IndexSampler shuffles with `config.data_seed`, repeats forever and hands process p the records p, p + P,
… (`ShardByJaxProcess`), so the order is fixed by the seed and the step. Each process reads batch_size / P examples
per step, which `jax.make_array_from_process_local_data` assembles into the global batch. The iterator's position
is saved with each checkpoint (Grain's Orbax handler, one file per process).

This is the only module that imports Grain; the step, the losses and the benchmarks do not need it.
"""

from __future__ import annotations

import grain
import jax
from jax.sharding import Mesh

from train import sharding
from train.configs import TrainConfig
from train.shards import LatentShards


class _Snapshot:
  """An iterator state frozen when a checkpoint is requested (the save may run after the iterator has moved on)."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


class Batches:
  """Global batches of `config.batch_size` examples; see the module docstring."""

  def __init__(self, config: TrainConfig, mesh: Mesh):
    source = LatentShards(config.data_dir)
    dit = config.dit()
    want_latent = (config.frames, config.height, config.width, dit.latent_channels)
    if source.latent_shape != want_latent or source.context_shape[1] != dit.text_dim \
        or source.context_shape[0] > dit.text_len:
      raise ValueError(f"{config.data_dir} holds latents {source.latent_shape} and contexts {source.context_shape}; "
                       f"config {config.name!r} needs latents {want_latent} and contexts [≤ {dit.text_len}, "
                       f"{dit.text_dim}]")
    processes = jax.process_count()
    if config.batch_size % mesh.size or config.batch_size % processes:
      raise ValueError(f"batch_size {config.batch_size} must divide over {mesh.size} devices and {processes} "
                       "processes")
    self.per_process = config.batch_size // processes
    if len(source) < self.per_process * processes:
      raise ValueError(f"{config.data_dir} has {len(source)} examples, fewer than one batch ({config.batch_size})")
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        shuffle=True, num_epochs=None, seed=config.data_seed)
    loader = grain.DataLoader(
        data_source=source, sampler=sampler,
        operations=[grain.transforms.Batch(self.per_process, drop_remainder=True)], worker_count=0,
        read_options=grain.ReadOptions(num_threads=config.data_threads, prefetch_buffer_size=2 * self.per_process))
    self._iterator = iter(loader)
    self._sharding = sharding.batch_sharding(mesh)
    self.shapes = {"source": (config.batch_size, *want_latent), "target": (config.batch_size, *want_latent),
                   "context": (config.batch_size, *source.context_shape)}

  def __iter__(self) -> "Batches":
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self._iterator)
    return {k: jax.make_array_from_process_local_data(self._sharding, v, self.shapes[k]) for k, v in local.items()}

  def abstract(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch's shapes with their sharding (to compile the step before the first batch)."""
    return {k: jax.ShapeDtypeStruct(s, "float32", sharding=self._sharding) for k, s in self.shapes.items()}

  def save_args(self):
    """Orbax args saving the iterator's current position."""
    return grain.checkpoint.CheckpointSave(_Snapshot(self._iterator.get_state()))

  def restore_args(self):
    """Orbax args that restore the position into this iterator."""
    return grain.checkpoint.CheckpointRestore(self._iterator)
