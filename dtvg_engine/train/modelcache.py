"""The model cache: where built-in models are converted on first use (`$DTVG_CACHE_DIR`, else the
user cache dir). Standard library and platformdirs only, so the CLI can check it before any run exists
without importing torch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from dtvg_engine.errors import UserError


def cache_dir() -> Path:
    """Where converted models live: `$DTVG_CACHE_DIR` or the user cache dir."""
    return Path(os.environ.get("DTVG_CACHE_DIR") or user_cache_dir("dtvg-studio"))


SMOLLM2_CACHE = "models/smollm2-135m"
TOKENIZER_CACHE = "tokenizers/smollm2"
"""The cache entries (under `cache_dir()`) the built-in models are converted into on first use."""
_CACHE_ENTRIES = {
    "smollm2-135m": (SMOLLM2_CACHE, TOKENIZER_CACHE),
    "tiny-llama": (TOKENIZER_CACHE,),
    "tiny-t5": (TOKENIZER_CACHE,),
}


def unwritable_cache(folder: Path, error: OSError) -> UserError:
    """The one line for a cache folder that cannot be written."""
    return UserError(
        f"the model cache {folder} cannot be written ({error.strerror or error}); set DTVG_CACHE_DIR "
        "to a writable folder (built-in models are converted into it on first use)"
    )


def check_cache(name: str) -> None:
    """Refuse, before any run exists, a model cache that model `name` would need to write and cannot
    (a read-only home or DTVG_CACHE_DIR): the worker would fail on its first step."""
    missing = [entry for entry in _CACHE_ENTRIES.get(name, ()) if not (cache_dir() / entry).is_dir()]
    if not missing:
        return
    folder = (cache_dir() / missing[0]).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise unwritable_cache(folder, e) from None
