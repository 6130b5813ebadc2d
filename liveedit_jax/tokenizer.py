"""The umT5 tokenizer, read from files on disk (never downloaded), with Wan's prompt cleaning and padding.

    tokenizer = Tokenizer("Wan2.1-T2V-1.3B/google/umt5-xxl")
    ids, mask = tokenizer(["a red fox in the snow"])   # [B, 512] int32 (pad id 0), [B, 512] bool

The `google/umt5-xxl` folder shipped beside Wan checkpoints holds `tokenizer.json` and `spiece.model`
(spec §7.3). `tokenizer.json` is read with the `tokenizers` package when that is installed: it is the file Wan's
`AutoTokenizer.from_pretrained` reads, so the ids are Wan's. Otherwise `spiece.model` is read with `sentencepiece`
(a runtime dependency). The two give the same ids on text, except that sentencepiece does not read special-token
strings typed into a prompt ("</s>", "<extra_id_0>") as single tokens.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

import ftfy

SPIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
# Everything of a transformers tokenizer folder that is worth copying beside converted weights.
TOKENIZER_FILES = (SPIECE_FILE, TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json")

# Wan collapses `\s+` with the `regex` package, whose \s is Unicode White_Space; Python's `re` also counts the
# separators U+001C–U+001F as \s, so they are excluded here.
_WHITESPACE = re.compile(r"[^\S\x1c-\x1f]+")


def clean_prompt(text: str) -> str:
  """Wan's 'whitespace' cleaning (W:wan/modules/tokenizers.py): ftfy.fix_text (it repairs mojibake), HTML
  entities unescaped twice, whitespace runs collapsed to one space, ends stripped."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return _WHITESPACE.sub(" ", text).strip()


class Tokenizer:
  """Cleans, tokenizes, appends </s>, truncates and pads prompts to `max_length` (spec §7.3).

  Attributes: backend ("tokenizers" or "sentencepiece"), max_length, pad_id, eos_id, vocab_size (ids are below it).
  """

  def __init__(self, directory: str | os.PathLike, max_length: int = 512):
    directory = Path(directory)
    self.directory = directory
    self.max_length = max_length
    if (directory / TOKENIZER_JSON).is_file() and _has_tokenizers():
      from tokenizers import Tokenizer as HFTokenizer  # noqa: PLC0415 (optional dependency)

      tok = HFTokenizer.from_file(str(directory / TOKENIZER_JSON))
      # Settings saved in the file would pad or cut before this class does.
      tok.no_truncation()
      tok.no_padding()
      self.backend = "tokenizers"
      self.pad_id, self.eos_id = tok.token_to_id("<pad>"), tok.token_to_id("</s>")
      self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
      self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
    elif (directory / SPIECE_FILE).is_file():
      import sentencepiece  # noqa: PLC0415

      sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / SPIECE_FILE))
      self.backend = "sentencepiece"
      self.pad_id, self.eos_id = sp.pad_id(), sp.eos_id()
      self.vocab_size = sp.get_piece_size()
      self._encode = sp.encode
    else:
      have = "" if _has_tokenizers() else f" ({TOKENIZER_JSON} needs the `tokenizers` package)"
      raise FileNotFoundError(f"{directory}: no tokenizer: expected {SPIECE_FILE} or {TOKENIZER_JSON}{have}")
    if self.pad_id is None or self.pad_id < 0 or self.eos_id is None or self.eos_id < 0:
      raise ValueError(f"{directory}: the {self.backend} tokenizer defines no <pad> or </s> token "
                       f"(pad id {self.pad_id}, eos id {self.eos_id})")

  def ids(self, prompt: str) -> list[int]:
    """The cleaned prompt's token ids followed by </s>, not truncated."""
    return [*self._encode(clean_prompt(prompt)), self.eos_id]

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """prompts (B strings) → (ids [B, max_length] int32, mask [B, max_length] bool, True up to and at </s>).

    A prompt longer than max_length keeps its first max_length − 1 tokens and </s> (transformers' truncation),
    with a warning that names it.
    """
    if isinstance(prompts, str):
      raise TypeError("the tokenizer takes a list of prompts, got a single string")
    ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), self.max_length), bool)
    for i, prompt in enumerate(prompts):
      tokens = self.ids(prompt)
      if len(tokens) > self.max_length:
        warnings.warn(f"prompt {i} has {len(tokens)} tokens with </s>, more than max_length={self.max_length}: "
                      f"truncated, its last {len(tokens) - self.max_length} tokens dropped", stacklevel=2)
        tokens = [*tokens[:self.max_length - 1], self.eos_id]
      ids[i, :len(tokens)] = tokens
      mask[i, :len(tokens)] = True
    return ids, mask


def _has_tokenizers() -> bool:
  return importlib.util.find_spec("tokenizers") is not None
