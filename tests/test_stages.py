"""The training stages' table (`train.stages`): what each trains, reads frozen and loads, and the FLOP counts the
loop's MFU and the train benchmark divide by, against counts made here from the masks and the forward's FLOPs."""

import jax
import pytest

from liveedit_jax.attention import AttentionMask
from train import flops, stages
from train.configs import TrainConfig


def _config(stage: int) -> TrainConfig:
  return TrainConfig.preset("tiny", stage, frames=6, height=8, width=8, batch_size=2)


def test_each_stage_trains_reads_and_loads_its_trees():
  one, two, three = (stages.STAGES[n] for n in (1, 2, 3))
  for stage in (one, two):
    assert (stage.trained, stage.frozen_loads, stage.ema_of, stage.inits) == (("model",), {}, "model", ("init",))
    assert stage.turns(_config(stage.number)) == ["step"] and not stage.generator_metrics
  assert three.trained == ("generator", "fake_score") and three.frozen_loads == {"real_score": "score_init"}
  assert three.ema_of == "generator" and three.inits == ("init", "score_init")
  config = _config(3)
  assert three.turns(config) == ["generator"] + ["critic"] * (config.gen_every - 1)
  assert three.learning_rates(config) == {"lr": config.lr, "critic_lr": config.critic_lr}
  assert one.learning_rates(config) == {"lr": config.lr}
  # The fake score and the real score come from one draw (the same field), the generator from another.
  trained, frozen = jax.eval_shape(lambda: three.random_params(config, jax.random.key(0)))
  assert set(trained) == {"generator", "fake_score"} and set(frozen) == {"real_score"}
  assert jax.tree.structure(trained["fake_score"]) == jax.tree.structure(frozen["real_score"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_step_flops_count_the_forwards_over_the_visible_pairs(stage):
  config, b = _config(stage), 2
  dit = config.dit()
  tokens = config.frames * (config.height // 2) * (config.width // 2)
  chunk = config.chunk_frames * (config.height // 2) * (config.width // 2)
  causal = sum(chunk * (c + 1) * chunk for c in range(tokens // chunk))  # chunk c sees chunks 0 … c
  counted = stages.STAGES[stage].flops(config, b)
  if stage == 1:
    assert counted == {"step": 3 * flops.dit_forward_flops(dit, b, tokens, tokens * tokens)}
  elif stage == 2:  # [clean ‖ noisy]: the clean half chunk-causal, a noisy chunk its earlier clean chunks and itself
    assert AttentionMask("teacher_forcing", chunk).visible_pairs(2 * tokens, 2 * tokens) == 2 * causal
    assert counted == {"step": 3 * flops.dit_forward_flops(dit, b, 2 * tokens, 2 * causal)}
  else:
    assert counted["step"] == pytest.approx(counted["critic"] + counted["generator"] / config.gen_every)
    assert counted["generator"] > counted["critic"] > 3 * flops.dit_forward_flops(dit, b, tokens, tokens * tokens)
    turns = stages.STAGES[3].turn_flops(config)
    assert turns == {"generator": counted["generator"] + counted["critic"], "critic": counted["critic"]}
