"""The default model: the benchmark's small editor, shipped inside the package, used where no model is named.

    from liveedit_jax import default_model
    dirs = default_model.resolve(dit=None, vae="runs/synth/vae", text_encoder=None)  # None: the default's part
    dirs.dit, dirs.label("dit")   # its path; "the default model's dit (liveedit_jax/models/synth/dit)"
    dit, vae, text = default_model.check_models(dirs, height=128, width=128)   # configs that fit, or one error
    default_model.native()        # Native(frames=33, height=128, width=128, fps=16.0): the clips it was trained on

Layout, as `python -m train.recipe --package liveedit_jax/models/synth` writes it:
  models/synth/{dit,vae,text_encoder}/   converted directories: config.json + params.safetensors (bfloat16),
                                         text_encoder also tokenizer/spiece.model (`param_io.save_params`)
  models/synth/recipe.json               {"frames", "height", "width", "fps": its native clip size,
                                          "sources": {...}, "files": {"dit/params.safetensors": sha256 hex, ...}}
LIVEEDIT_DEFAULT_MODEL=DIR makes DIR (the same layout) the default model instead: a rebuilt recipe, or the tests'
tiny models.

Before a default part is used, `resolve` checks each of its files against the sha256 recipe.json lists, so a
missing or damaged file (a partial checkout, a git-lfs pointer, a truncated install) fails at once, named, with how
to restore it, instead of deep in a loader. The files are small (≤ 25 MB, some 20 ms to hash); each hash is kept
for the process, keyed by path, size and modification time, so a file changed since is hashed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from liveedit_jax import autoencoders, cli, param_io
from liveedit_jax.config import DiTConfig
from liveedit_jax.umt5 import KIND as UMT5_KIND
from liveedit_jax.umt5 import UMT5Config

ENV = "LIVEEDIT_DEFAULT_MODEL"
DEFAULT_DIR = Path(__file__).resolve().parent / "models" / "synth"
SHOWN_DIR = "liveedit_jax/models/synth"  # how messages write DEFAULT_DIR (and the restore commands take it)
PARTS = ("dit", "vae", "text_encoder")
RECIPE_FILE = "recipe.json"
NATIVE_KEYS = ("frames", "height", "width", "fps")


class DefaultModelError(cli.UserError):
  """The default model is missing, damaged or its recipe.json unreadable (the message says how to restore it)."""


@dataclasses.dataclass(frozen=True)
class Native:
  """The clip size the default model was trained on, from recipe.json."""

  frames: int
  height: int
  width: int
  fps: float


def directory() -> Path:
  """The default model's directory: $LIVEEDIT_DEFAULT_MODEL when set, else the package's models/synth."""
  return Path(os.environ[ENV]) if os.environ.get(ENV) else DEFAULT_DIR


def paths() -> dict[str, Path]:
  """{"dit", "vae", "text_encoder"}: the default model's converted directories."""
  root = directory()
  return {part: root / part for part in PARTS}


def shown(path: Path) -> str:
  """A path under the default directory as messages write it (the package's as liveedit_jax/models/synth/...)."""
  root = directory()
  if root != DEFAULT_DIR:
    return str(path)
  relative = path.relative_to(root)
  return str(Path(SHOWN_DIR, relative)) if relative.parts else SHOWN_DIR


def label(part: str) -> str:
  """"the default model's dit (liveedit_jax/models/synth/dit)"."""
  return f"the default model's {part} ({shown(directory() / part)})"


def _restore() -> str:
  root = directory()
  if root == DEFAULT_DIR:
    return (f"restore it with `git checkout -- {SHOWN_DIR}` in a clone of the repository, `pip install "
            f"--force-reinstall liveedit-jax` for an installed package, or rebuild it with "
            f"`python -m train.recipe --package {SHOWN_DIR}`")
  return (f"{ENV} points to {root}: rebuild it with `python -m train.recipe --package {root}`, or unset {ENV} to "
          f"use the package's own")


def recipe() -> dict[str, Any]:
  """The default model's recipe.json."""
  file = directory() / RECIPE_FILE
  try:
    data = json.loads(file.read_text())
  except FileNotFoundError:
    raise DefaultModelError(f"{shown(file)}: the default model is missing (no {RECIPE_FILE}); {_restore()}") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DefaultModelError(f"{shown(file)}: the default model's recipe is unreadable ({e}); {_restore()}") from None
  if not isinstance(data, dict):
    raise DefaultModelError(f"{shown(file)}: expected a JSON object, got {type(data).__name__}; {_restore()}")
  return data


def native() -> Native:
  """The default model's native clip size (recipe.json's frames, height, width, fps)."""
  data = recipe()
  bad = [key for key in NATIVE_KEYS if isinstance(data.get(key), bool) or not isinstance(data.get(key), (int, float))
         or data[key] <= 0]
  if bad:
    raise DefaultModelError(f"{shown(directory() / RECIPE_FILE)}: needs positive numbers for {', '.join(bad)}; "
                            f"{_restore()}")
  return Native(int(data["frames"]), int(data["height"]), int(data["width"]), float(data["fps"]))


def native_or_none() -> Native | None:
  """`native()`, or None when the default model is missing or its recipe.json unreadable (for help texts, which
  must print either way)."""
  try:
    return native()
  except DefaultModelError:
    return None


_hashes: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
  stat = path.stat()
  key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
  if key not in _hashes:
    with open(path, "rb") as f:
      _hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
  return _hashes[key]


def check(parts: Iterable[str] = PARTS) -> None:
  """Raises DefaultModelError naming the first file of `parts` that is missing or whose sha256 differs from the
  one recipe.json lists, with how to restore it."""
  root = directory()
  files = recipe().get("files")
  if not isinstance(files, dict):
    raise DefaultModelError(f"{shown(root / RECIPE_FILE)}: has no \"files\" table of sha256s; {_restore()}")
  for part in parts:
    listed = sorted((name, digest) for name, digest in files.items() if Path(name).parts[:1] == (part,))
    if not listed:
      raise DefaultModelError(f"{shown(root / RECIPE_FILE)}: lists no files of the default model's {part}; "
                              f"{_restore()}")
    for name, digest in listed:
      path = root / name
      if not path.is_file():
        raise DefaultModelError(f"{shown(path)}: the default model's file is missing; {_restore()}")
      if (found := _sha256(path)) != digest:
        raise DefaultModelError(f"{shown(path)}: the default model's file is damaged (sha256 {found[:12]}…, "
                                f"{RECIPE_FILE} lists {str(digest)[:12]}…); {_restore()}")


@dataclasses.dataclass(frozen=True)
class ModelDirs:
  """The model directories a run uses, each given by its option or else the default model's part."""

  dit: str
  vae: str
  text_encoder: str | None  # None: the run needs no text encoder (the stream CLI's --context)
  defaults: tuple[str, ...] = ()  # the parts taken from the default model

  def label(self, part: str) -> str:
    """How messages name a part's directory: its path, or "the default model's dit (liveedit_jax/...)"."""
    return label(part) if part in self.defaults else str(getattr(self, part))


def resolve(dit: str | None, vae: str | None, text_encoder: str | None, text: bool = True) -> ModelDirs:
  """Each part as given, or the default model's where None (its files checked first, see `check`).

  text: whether a text encoder is needed; without one, text_encoder stays None.
  """
  given = {"dit": dit, "vae": vae, "text_encoder": text_encoder}
  defaults = tuple(p for p in PARTS if given[p] is None and (text or p != "text_encoder"))
  if defaults:
    check(defaults)
  default_paths = paths()
  return ModelDirs(**{p: str(default_paths[p]) if p in defaults else given[p] for p in PARTS}, defaults=defaults)


def check_models(dirs: ModelDirs, height: int, width: int) -> tuple[DiTConfig, autoencoders.Config,
                                                                   UMT5Config | None]:
  """Reads the configs (no weights) and checks that the parts fit each other and the frame size; a mismatch is
  one ValueError naming both directories. Returns (DiT, VAE or TAEHV: `dirs.vae` holds either, text encoder or
  None) configs."""
  name = dirs.label
  dit = DiTConfig.from_dict(param_io.read_config(dirs.dit, "dit"))
  vae = autoencoders.read_config(dirs.vae)
  kind = autoencoders.kind_of(vae)
  text = None
  if dirs.text_encoder is not None:
    text = UMT5Config.from_dict({k: v for k, v in param_io.read_config(dirs.text_encoder, UMT5_KIND).items()
                                 if k != "fingerprint"})
  if not dit.is_editing:
    raise ValueError(f"{name('dit')}: config {dit.name!r} has in_channels {dit.in_channels}, expected "
                     f"{2 * dit.latent_channels} (an editing model: noisy ‖ source latents); convert a LiveEdit "
                     f"checkpoint, or widen a text-to-video one with `python -m convert.wan_dit --in-channels 32`")
  if (channels := autoencoders.latent_channels(vae)) != dit.latent_channels:
    raise ValueError(f"{name('vae')}: {kind.noun} {kind.channels_field} {channels} differs from the DiT's "
                     f"latent_channels {dit.latent_channels} (in_channels {dit.in_channels} / 2) of {name('dit')}")
  if text is not None and text.dim != dit.text_dim:
    raise ValueError(f"{name('text_encoder')}: text encoder width {text.dim} differs from the DiT's text_dim "
                     f"{dit.text_dim} ({name('dit')})")
  if text is not None and text.text_len > dit.text_len:
    raise ValueError(f"{name('text_encoder')}: text encoder pads prompts to {text.text_len} tokens, more than the "
                     f"DiT's text_len {dit.text_len} ({name('dit')})")
  _, ph, pw = dit.patch_size
  s = vae.spatial_factor
  if height <= 0 or width <= 0 or height % (s * ph) or width % (s * pw):
    raise ValueError(f"--height {height} and --width {width} must be positive multiples of {s * ph} and "
                     f"{s * pw}: the {kind.noun} ({name('vae')}) downsamples by {s} and the DiT's patch "
                     f"({name('dit')}) is {ph}×{pw} latents")
  return dit, vae, text
