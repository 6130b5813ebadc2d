"""umT5 tokenizer: Wan's prompt cleaning, and ids and masks equal to transformers' tokenizer on the same files.

Reference: transformers 5.23 `T5Tokenizer` (what Wan's `AutoTokenizer.from_pretrained("google/umt5-xxl")` builds),
called as Wan's `HuggingfaceTokenizer` does (W:wan/modules/tokenizers.py; spec §7.3): after the 'whitespace'
cleaning, with padding="max_length", truncation=True, max_length=512.
"""

import html
import random
import shutil
import warnings

import numpy as np
import pytest
import regex
import sentencepiece
import transformers

from liveedit_jax.tokenizer import Tokenizer, clean_prompt

try:
  import ftfy
except ImportError:
  ftfy = None

MAX_LENGTH = 512
LONG_INDEX = 6
PROMPTS = [
    "a cat kato the street",
    "  Café   naïve\tover\n東京  ",  # whitespace runs, accents, CJK
    "rain &amp;amp; neon &lt;b&gt; lights",  # entities, one escaped twice
    "zzz ☃ ðŸ‘ qqq",  # mojibake (ftfy repairs it) and characters the vocabulary lacks
    "ﬁ ① ＡＢ",  # compatibility characters: the model's NFKC character map
    "",
    " ".join(["katorimu senda lovi"] * 300),  # far over 512 tokens
]
SPECIAL_TOKEN_PROMPT = "<extra_id_3> dog </s> x"  # literal special tokens: single ids in tokenizer.json only


def write_tokenizer(directory):
  """A transformers tokenizer folder like Wan's `google/umt5-xxl/`: spiece.model + tokenizer.json (+ config).

  The sentencepiece model is a 256-piece unigram model with T5's ids (<pad> 0, </s> 1, <unk> 2), trained on a
  generated corpus; transformers adds its 100 sentinel tokens.
  """
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(0)
  syllables = ["ka", "to", "ri", "mu", "sen", "da", "lo", "vi", "pe", "qu", "zha", "ne", "o", "a", "ré", "ü", "日",
               "本", "東", "京", "ß"]
  words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
  words += ["cat", "dog", "street", "the", "a", "rain", "neon"]
  corpus = directory / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(directory / "spiece"), vocab_size=256, model_type="unigram", pad_id=0,
      eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  corpus.unlink()
  (directory / "spiece.vocab").unlink()
  transformers.T5Tokenizer.from_pretrained(directory).save_pretrained(directory)
  return directory


def wan_clean(text):
  """Wan's basic_clean then whitespace_clean, written from the spec (§7.3), with Wan's `regex` package."""
  if ftfy is not None:
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return regex.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  return write_tokenizer(tmp_path_factory.mktemp("umt5_tokenizer"))


def test_clean_prompt():
  assert clean_prompt("  a \n\t b  c ") == "a b c"
  assert clean_prompt("fish &amp;amp; chips &lt;3") == "fish & chips <3"
  assert clean_prompt("") == ""
  pytest.importorskip("ftfy")
  assert clean_prompt("cafÃ© au lait") == "café au lait"


@pytest.mark.parametrize("backend", ["tokenizers", "sentencepiece"])
def test_matches_transformers(tokenizer_dir, tmp_path, backend):
  reference = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  directory = tokenizer_dir
  prompts = list(PROMPTS)
  if backend == "sentencepiece":  # the folder without tokenizer.json
    directory = tmp_path
    shutil.copy(tokenizer_dir / "spiece.model", directory)
  else:
    prompts.append(SPECIAL_TOKEN_PROMPT)
  tokenizer = Tokenizer(directory, max_length=MAX_LENGTH)
  assert tokenizer.backend == backend
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ids, mask = tokenizer(prompts)
  want = reference([wan_clean(p) for p in prompts], padding="max_length", truncation=True, max_length=MAX_LENGTH,
                   return_tensors="np")
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
  assert ids.dtype == np.int32 and mask.dtype == bool

  n_long = len(tokenizer.ids(PROMPTS[LONG_INDEX]))
  assert n_long > MAX_LENGTH
  assert [str(w.message) for w in caught] == [
      f"prompt {LONG_INDEX} has {n_long} tokens with </s>, more than max_length={MAX_LENGTH}: truncated, its last "
      f"{n_long - MAX_LENGTH} tokens dropped"]
  assert mask[LONG_INDEX].all() and ids[LONG_INDEX, -1] == tokenizer.eos_id
  assert ids[5, 0] == tokenizer.eos_id and mask[5].sum() == 1  # the empty prompt is </s> alone


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected spiece.model or tokenizer.json"):
    Tokenizer(tmp_path)
  with pytest.raises(TypeError, match="list of prompts"):
    Tokenizer.__call__(None, "one string")
