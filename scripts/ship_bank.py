"""Ship the task prompt vectors of finished stage-1 runs in the source bank (README: "Source bank").

    python scripts/ship_bank.py RUN_DIR... [--bank-dir dtvg_engine/method/bank]

The runs must be completed full-data (not k-shot) stage-1 runs of one shared init. Their `tpv.safetensors`
go to `<bank>/<init_id>/<task>.safetensors`, the init they were tuned from to `init.safetensors`
(byte for byte), and `bank.json` records each vector's provenance: the run, its config, the steps
trained, the best validation checkpoint, its validation and test scores, the constant-prediction floor,
the date and the file's sha256 (`dtvg_engine.method.bank` describes the layout). A task already in the bank is
replaced; the others stay. Exit 2 with one line for a run the bank cannot take.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dtvg_engine.config import init_id
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank
from dtvg_engine.runs.atomic import replacing, write_json_atomic
from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, INITS_DIR, TPV, find_run, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.studies.studyresults import recorded_constant

LOCAL_KEYS = ("run_id", "created", "runs_dir")
"""Config keys that say where a run was made, not how: left out of the shipped record."""


def _scores(evaluation: Any) -> dict[str, Any] | None:
    return {"metrics": dict(evaluation.metrics), "primary": evaluation.primary} if evaluation else None


def provenance(run_dir: Path) -> tuple[str, str, dict[str, Any]]:
    """(init id, task, what bank.json records of the run's vector); UserError for a run the bank cannot
    take: not stage 1, k-shot, or not completed with its vector."""
    config = read_config(run_dir)
    name = run_dir.name
    if config.get("stage") != "stage1":
        raise UserError(f"{name} is not a stage-1 run; the bank holds stage-1 vectors of source tasks")
    if config.get("k_shot"):
        raise UserError(
            f"{name} is a {config['k_shot']}-shot run; the bank holds sources tuned on their full data"
        )
    status = summarize(run_dir).status
    if status != "completed" or not (run_dir / TPV).is_file():
        raise UserError(f"{name} is {status}, not completed with its {TPV}; ship finished runs only")
    state = read_state(run_dir / EVENTS)
    made = {key: value for key, value in config.items() if key not in LOCAL_KEYS}
    if made.get("data_dir"):
        made["data_dir"] = Path(made["data_dir"]).name  # which copy of the data, not this machine's path
    record = {
        "source_run": name,
        "config": made,
        "steps": state.step,
        "best_step": state.best.step if state.best else None,
        "validation": _scores(state.best),
        "test": _scores(state.last_eval.get("test")),
        "constant": recorded_constant(config),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return init_id(config["model"], config["prompt_length"], config["init_seed"]), config["task"], record


def ship(run_dirs: list[Path], bank_dir: Path) -> list[str]:
    """Copy the runs' vectors and their init into the bank and update its index; returns what it did."""
    made = [(run_dir, *provenance(run_dir)) for run_dir in run_dirs]
    idents = sorted({ident for _, ident, _, _ in made})
    if len(idents) > 1:
        raise UserError(f"the runs come from different inits ({', '.join(idents)}); ship one init at a time")
    (ident,) = idents
    tasks = [task for _, _, task, _ in made]
    twice = sorted({task for task in tasks if tasks.count(task) > 1})
    if twice:
        raise UserError(f"more than one run of {', '.join(twice)}; ship one run per task")
    inits = {run_dir.parent / INITS_DIR / f"{ident}.safetensors" for run_dir, *_ in made}
    missing = sorted(str(path) for path in inits if not path.is_file())
    if missing:
        raise UserError(f"the shared init {missing[0]} the runs were tuned from is missing")
    digests = {bank.sha256_of(path) for path in inits}
    if len(digests) > 1:
        raise UserError(f"the runs' folders hold different P_init files for {ident}; ship one runs directory")
    (init_sha,) = digests
    existing = bank.read_init(ident, bank_dir)
    if existing is not None and existing.init_sha256 != init_sha:
        raise UserError(
            f"the bank's init {ident} ({existing.init_path}) is not the one these runs were tuned from; "
            "ship them to another --bank-dir, or remove that init folder first"
        )
    folder = bank_dir / ident
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(folder / bank.INIT_FILE) as tmp:
        shutil.copyfile(next(iter(inits)), tmp)
    vectors = {task: vector.provenance for task, vector in (existing.vectors if existing else {}).items()}
    done = []
    for run_dir, _, task, record in made:
        target = folder / f"{task}.safetensors"
        with replacing(target) as tmp:
            shutil.copyfile(run_dir / TPV, tmp)
        vectors[task] = record | {"sha256": bank.sha256_of(target)}
        done.append(f"{ident}/{task}: {run_dir.name}, {record['steps']} steps")
    config = made[0][3]["config"]
    init = {"sha256": init_sha} | {key: config[key] for key in ("model", "prompt_length", "init_seed")}
    index = {"format": bank.FORMAT, "init_id": ident, "init": init, "vectors": dict(sorted(vectors.items()))}
    write_json_atomic(folder / bank.INDEX, index)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished stage-1 run folders")
    parser.add_argument(
        "--bank-dir", type=Path, default=bank.PACKAGE_BANK, help="the bank (default: the package's)"
    )
    args = parser.parse_args(argv)
    try:
        run_dirs = [find_run(path.parent, path.name) for path in args.runs]
        for line in ship(run_dirs, args.bank_dir):
            print(f"shipped {line}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"bank: {args.bank_dir}")


if __name__ == "__main__":
    main()
