"""Builds the default model's text encoder: a word-level sentencepiece tokenizer over the benchmark's instructions
and a umT5 of the `synth` preset at its random initialisation.

    python -m train.text_encoder --out runs/synth/text_encoder

The instructions of `liveedit_jax.synthetic` are templated from a few dozen words, so a word-level vocabulary
covers them exactly; a word outside it becomes <unk>, with a warning from the tokenizer. The encoder stays at its
random init, frozen: a random transformer already maps distinct word sequences to distinct, position-aware
embeddings, the DiT's cross-attention learns to read them, and the training stages consume precomputed
embeddings, so a trained encoder would need a training loop of its own for no gain on a closed vocabulary.
The directory is the same as `python -m convert.umt5` writes, fingerprint included.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import jax
import sentencepiece

from convert.umt5 import save_text_encoder
from liveedit_jax import cli
from liveedit_jax.synthetic import instructions
from liveedit_jax.tokenizer import SPIECE_FILE
from liveedit_jax.umt5 import TOKENIZER_DIR, UMT5_PRESETS, UMT5Config, init_umt5_params


def train_tokenizer(sentences: list[str], path: Path) -> int:
  """Writes a word-level sentencepiece model of `sentences` to `path`; returns its vocabulary size.

  Ids: <pad> 0 (umT5's pad), </s> 1, <unk> 2, no <s>; words are lower-cased by the normaliser.
  """
  model = io.BytesIO()
  words = {w for s in sentences for w in s.lower().split()}
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, model_type="word", vocab_size=len(words) + 3,
      hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc_cf",
      character_coverage=1.0, minloglevel=2)
  path.write_bytes(model.getvalue())
  return sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def build(out: str | Path, preset: str = "synth", seed: int = 0, overwrite: bool = False) -> Path:
  """Trains the tokenizer, initialises the encoder from `seed` and saves both as a converted umT5 directory."""
  config = UMT5Config.preset(preset)
  with tempfile.TemporaryDirectory() as tmp:
    spiece = Path(tmp) / SPIECE_FILE
    vocab = train_tokenizer(instructions(), spiece)
    if vocab > config.vocab_size:
      raise ValueError(f"the instruction vocabulary has {vocab} pieces, more than the {preset!r} preset's "
                       f"{config.vocab_size} embeddings")
    params = jax.device_get(init_umt5_params(config, jax.random.key(seed)))
    files = {f"{TOKENIZER_DIR}/{SPIECE_FILE}": spiece}
    return save_text_encoder(out, config, params, files, overwrite)


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(prog="python -m train.text_encoder", description=__doc__)
  parser.add_argument("--out", required=True, help="the text encoder directory to write")
  parser.add_argument("--preset", default="synth", choices=sorted(UMT5_PRESETS), help="umT5 preset")
  # The default spelled out: the help formatter would hide a default of 0 (it equals False).
  parser.add_argument("--seed", type=int, default=0, help="of the random init (default: %(default)s)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  cli.refuse_existing(args.out, args.overwrite, "--out")  # before training the tokenizer, not after
  print(build(args.out, args.preset, args.seed, args.overwrite))


if __name__ == "__main__":
  cli.run(main)  # user mistakes as one line on stderr, exit status 1 (2 for usage)
