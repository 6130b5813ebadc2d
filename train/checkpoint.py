"""Orbax checkpoints of a training run, and the export of trained weights for the next stage.

    <workdir>/checkpoints/<step>/state   the TrainState: trained params, optimizer states, EMA, step, PRNG key
    <workdir>/checkpoints/<step>/data    the input iterator's position, one JSON file per process

Saves are asynchronous (the next steps run while the arrays are written) and atomic (Orbax writes to a temp
directory and renames it when every process is done), `keep` checkpoints are kept, and a restore reads the latest
finished one into an abstract state that carries the target shardings, so arrays land sharded. Frozen trees (the
stage-3 real score) are never saved: they are reloaded every run.

An export (`<workdir>/export`, `<workdir>/export_ema`) is a converted-DiT directory (config.json + params) that
`liveedit_jax.load_dit` and the next stage's `--init` / `--score-init` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from liveedit_jax.config import DiTConfig
from liveedit_jax.param_io import CONFIG_FILE, PARAMS_DIR
from train.step import TrainState


class Checkpoints:
  """A run's checkpoint directory (Orbax CheckpointManager, items "state" and "data")."""

  def __init__(self, directory: str | Path, every: int, keep: int):
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, data_args: Any, force: bool = False) -> bool:
    """Starts an asynchronous save when `step` is on the save interval (or `force`); returns whether it did."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=data_args)
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: TrainState, data_args: Any) -> TrainState:
    """The state of checkpoint `step`, sharded as `abstract_state` says; moves the data iterator to its position."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=data_args)
    return self._manager.restore(step, args=args)["state"]

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def export(path: str | Path, config: DiTConfig, params: Any) -> Path:
  """Writes params as a converted DiT directory (every process takes part; process 0 writes config.json last)."""
  path = Path(path).absolute()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    (path / CONFIG_FILE).write_text(json.dumps({"kind": "dit", "config": json.loads(config.to_json())}, indent=2,
                                               sort_keys=True))
  return path
