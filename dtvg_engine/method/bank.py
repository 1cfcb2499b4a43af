"""The source bank: task prompt vectors of source tasks shipped with the package (issue 10).

Tuning a source prompt until it has learned takes thousands of steps, so the package ships the vectors
of the study's sources for the default model, together with the shared P_init they were tuned from.
Stage 2 and the pipeline use a bank vector for a source that has no local stage-1 run of the same init
(`config.stage2_config`), and a run of that init tunes from the bank's very P_init (`ensure_init`).

Layout (everything is data, JSON and safetensors, never pickle):

```
<bank>/<init_id>/init.safetensors   P_init, byte for byte as runs/_inits/<init_id>.safetensors holds it
<bank>/<init_id>/<task>.safetensors  a source's TPV, as a stage-1 run's tpv.safetensors
<bank>/<init_id>/bank.json          {"format", "init_id", "init": {"sha256"}, "vectors": {task: provenance}}
```

Each vector's provenance: `source_run`, `config` (the stage-1 settings), `steps` (trained), `best_step`,
`validation` and `test` (`metrics` and `primary`), `constant` (the best constant score on its test rows),
`exported` (date) and `sha256` of its file, which every load checks. `<bank>` is `$DTVG_BANK_DIR`, else
the package's `dtvg_engine/method/bank/`; an empty or absent folder means no bank. `scripts/ship_bank.py`
writes it.

Standard library only (the listing is for the dashboard too); `load_vector` imports torch when called.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import replacing
from dtvg_engine.runs.runfolder import INITS_DIR
from dtvg_engine.runs.safefiles import make_dir, open_file, read_json

BANK_ENV = "DTVG_BANK_DIR"
PACKAGE_BANK = Path(__file__).with_name("bank")
"""The bank shipped with the package (package data)."""
INDEX = "bank.json"
INIT_FILE = "init.safetensors"
FORMAT = "dtvg-bank-1"
_TASK_NAME = re.compile(r"[a-z0-9_]+")
"""A bank's task names are file names too: nothing that could leave the folder."""


def bank_dir() -> Path:
    """Where the bank is read from: `$DTVG_BANK_DIR`, else the package's `dtvg_engine/method/bank/`."""
    return Path(os.environ.get(BANK_ENV) or PACKAGE_BANK)


@dataclass(frozen=True)
class BankVector:
    """One shipped source vector and where it came from."""

    init_id: str
    task: str
    path: Path
    sha256: str
    provenance: dict[str, Any]
    """`source_run`, `config`, `steps`, `best_step`, `validation`, `test`, `constant`, `exported`."""

    @property
    def config(self) -> dict[str, Any]:
        """The stage-1 settings it was tuned with (seed, k_shot, max_eval make its split)."""
        config = self.provenance.get("config")
        return config if isinstance(config, dict) else {}

    def primary(self, split: str) -> float | None:
        """The validation (best checkpoint) or test primary score."""
        scores = self.provenance.get(split)
        return _number(scores.get("primary")) if isinstance(scores, dict) else None

    @property
    def constant(self) -> float | None:
        """The best score of a constant prediction on its test rows (the floor to read `test` against)."""
        return _number(self.provenance.get("constant"))

    def row(self) -> dict[str, Any]:
        """What `dtvg tpv bank --json` lists of it."""
        return {"init_id": self.init_id, "task": self.task, "file": str(self.path)} | self.provenance

    def describe(self) -> str:
        """One line for a run's log: which vector, from which run, how well it had learned."""
        made = self.provenance
        validation, test = self.primary("validation"), self.primary("test")
        scores = ", ".join(
            f"{name} {value:.3f}"
            for name, value in (("validation", validation), ("test", test))
            if value is not None
        )
        return (
            f"from the source bank ({self.init_id}, run {made.get('source_run')}, {made.get('steps')} steps"
            + (f", {scores}" if scores else "")
            + f", exported {made.get('exported')})"
        )


@dataclass(frozen=True)
class BankInit:
    """The bank's vectors of one shared init, and the init itself."""

    init_id: str
    folder: Path
    init_sha256: str
    vectors: dict[str, BankVector]
    settings: tuple[str, int, int] | None = None
    """(model, prompt length, init seed) the init was sampled for, as its index records them."""

    @property
    def init_path(self) -> Path:
        return self.folder / INIT_FILE


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _damaged(path: Path, what: str) -> UserError:
    return UserError(
        f"source bank {path} is damaged ({what}); reinstall the package, ship it again with "
        f"scripts/ship_bank.py, or set {BANK_ENV} to another folder"
    )


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def read_init(init_id: str, root: Path | None = None) -> BankInit | None:
    """The bank's vectors of `init_id` (None when the bank has none); UserError for a damaged index."""
    folder = (root or bank_dir()) / init_id
    index = folder / INDEX
    if not index.is_file():
        return None
    try:
        doc = read_json(index)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(index, f"not readable JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _damaged(index, f"not a {FORMAT} index")
    if doc.get("init_id") != init_id:
        raise _damaged(index, f"it describes init {doc.get('init_id')!r}, its folder is {init_id}")
    init, vectors = doc.get("init"), doc.get("vectors")
    if not isinstance(init, dict) or not _text(init.get("sha256")) or not isinstance(vectors, dict):
        raise _damaged(index, "no init sha256 or no vectors")
    found = {}
    for task, made in vectors.items():
        if not _TASK_NAME.fullmatch(task) or not isinstance(made, dict) or not _text(made.get("sha256")):
            raise _damaged(index, f"bad entry {task!r}")
        found[task] = BankVector(init_id, task, folder / f"{task}.safetensors", made["sha256"], made)
    return BankInit(init_id, folder, init["sha256"], found, _init_settings(init))


def _init_settings(init: dict[str, Any]) -> tuple[str, int, int] | None:
    model, length, seed = init.get("model"), init.get("prompt_length"), init.get("init_seed")
    if _text(model) and isinstance(length, int) and isinstance(seed, int):
        return str(model), length, seed
    return None


def inits(root: Path | None = None) -> list[BankInit]:
    """Every init the bank holds vectors of, by init id (none for an empty or absent bank)."""
    root = root or bank_dir()
    if not root.is_dir():
        return []
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:1] not in "._")
    return [init for name in folders if (init := read_init(name, root)) is not None]


def entries(root: Path | None = None) -> list[BankVector]:
    """Every vector of the bank, by init id and task."""
    return [vector for init in inits(root) for _, vector in sorted(init.vectors.items())]


def find(init_id: str, task: str) -> BankVector | None:
    """The bank's vector of `task` tuned from `init_id`, if it has one."""
    init = read_init(init_id)
    return init.vectors.get(task) if init else None


def named(task: str, shipped: dict[str, str]) -> BankVector:
    """The vector a stage-2 config's `bank_sources` names for `task` (`{"init_id", "sha256"}`);
    UserError when the bank no longer has it."""
    vector = find(shipped["init_id"], task)
    if vector is None:
        raise UserError(
            f"the source bank ({bank_dir()}) has no {task} vector of init {shipped['init_id']}, which "
            f"this run was made with; set {BANK_ENV} to the bank it was made with"
        )
    return vector


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, sha256: str) -> Path:
    """`path`, once its bytes have the sha256 the bank's index records; UserError for a missing,
    truncated or changed file."""
    try:
        actual = sha256_of(path)
    except OSError as e:
        raise _damaged(path, f"cannot read it: {e.strerror or e}") from None
    if actual != sha256:
        raise _damaged(path, f"sha256 {actual[:12]}… where {INDEX} records {sha256[:12]}…")
    return path


def load_vector(vector: BankVector, sha256: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The checked `[r, d]` TPV tensor and its metadata. `sha256`: the file a run was made with (its
    config records it), so a bank changed since then is refused rather than silently used."""
    from dtvg_engine.method.tpv import load_tpv

    if sha256 is not None and sha256 != vector.sha256:
        raise UserError(
            f"the source bank's {vector.task} vector of {vector.init_id} changed since this run was made "
            f"(sha256 {vector.sha256[:12]}…, the run recorded {sha256[:12]}…); start a new stage-2 run"
        )
    tensor, meta = load_tpv(verified(vector.path, vector.sha256))
    if meta.get("init_id") != vector.init_id or meta.get("task") != vector.task:
        raise _damaged(vector.path, f"it holds {meta.get('task')} of init {meta.get('init_id')}")
    return tensor, meta


def _same_prompt(a: Path, b: Path) -> bool:
    """Whether two init files hold the same P_init tensor (their metadata may be written differently)."""
    from dtvg_engine.method.tpv_plain import read_tensor

    return read_tensor(a, "prompt") == read_tensor(b, "prompt")


def init_conflict(runs_dir: Path, init_id: str) -> str | None:
    """Why the runs directory's shared init `init_id` cannot be used with the bank's, or None (also
    when either is absent)."""
    init = read_init(init_id)
    local = Path(runs_dir) / INITS_DIR / f"{init_id}.safetensors"
    if init is None or not local.is_file():
        return None
    shipped = verified(init.init_path, init.init_sha256)
    if sha256_of(local) == init.init_sha256 or _same_prompt(local, shipped):
        return None
    return (
        f"{local} is not the source bank's init {init_id} ({shipped}), which the bank's vectors were "
        f"tuned from; use another --runs-dir, or set {BANK_ENV} to an empty folder to run without the bank"
    )


def check_init(runs_dir: Path, init_id: str) -> None:
    """Refuse, before any run exists, a runs directory whose init `init_id` is damaged or differs from
    the bank's."""
    from dtvg_engine.method.tpv_plain import read_tensor

    local = Path(runs_dir) / INITS_DIR / f"{init_id}.safetensors"
    if os.path.lexists(local):
        fix = "delete this damaged shared init: the next run samples it again from its seed"
        read_tensor(local, "prompt", fix=f"{fix} (or copies the bank's)")
    problem = init_conflict(runs_dir, init_id)
    if problem:
        raise UserError(problem)


def ensure_init(runs_dir: Path, init_id: str) -> None:
    """Make `runs/_inits/<init_id>` the bank's init when the bank has one: copied when absent (so runs
    tune from the very P_init the bank's vectors were computed against), refused when different."""
    local = Path(runs_dir) / INITS_DIR / f"{init_id}.safetensors"
    if local.is_file():
        check_init(runs_dir, init_id)
        return
    init = read_init(init_id)
    if init is None:
        return
    make_dir(local.parent)  # a real folder of the runs directory, not a link to one elsewhere
    with replacing(local) as tmp:  # parallel workers copy identical bytes; the last rename wins
        shutil.copyfile(verified(init.init_path, init.init_sha256), tmp)
