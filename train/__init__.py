"""LiveEdit's three training stages (docs/training.md).

configs (presets) · losses and rollout (pure functions) · step (TrainState, jitted steps) · sharding (the mesh and
every rule) · shards and data (format, Grain pipeline) · checkpoint (Orbax) · loop · flops · cli, stage1–3 and
prepare_data (entry points).
"""
