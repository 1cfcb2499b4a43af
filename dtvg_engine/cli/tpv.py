"""`dtvg tpv ...`: task prompt vectors: show, similarity matrix, arithmetic, the source bank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dtvg_engine.cli.common import JsonFlag, RunsDir, out, print_json, runs_root
from dtvg_engine.errors import UserError
from dtvg_engine.runs.atomic import replacing
from dtvg_engine.runs.runfolder import TPV, find_run, read_config
from dtvg_engine.runs.safefiles import check_output, regular_file

tpv_app = typer.Typer(help="Task prompt vectors: show, similarity, arithmetic.", no_args_is_help=True)


@tpv_app.command("show")
def tpv_show(run: str, runs_dir: RunsDir = None, as_json: JsonFlag = False) -> None:
    """A task prompt vector's metadata and norms."""
    from dtvg_engine.method.tpv import load_tpv

    run_dir = find_run(runs_root(runs_dir), run)
    if not (run_dir / TPV).is_file():
        raise UserError(f"run {run_dir.name} has no {TPV}; only completed stage-1 runs have a TPV")
    vector, meta = load_tpv(run_dir / TPV)
    info = {
        **meta,
        "shape": list(vector.shape),
        "norm": float(vector.norm()),
        "mean_token_norm": float(vector.norm(dim=1).mean()),
        "max_token_norm": float(vector.norm(dim=1).max()),
    }
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        out.print(f"[bold]{key}[/bold]: {value}")


def _vectors(root: Path, refs: list[str]) -> dict[str, tuple[Path, Any, dict[str, Any]]]:
    """Stage-1 TPVs by label (their task, or the run id when a task appears twice)."""
    from dtvg_engine.method.tpv import check_compatible, load_tpv

    loaded = []
    for ref in refs:
        run_dir = find_run(root, _newest_stage1(root, ref))
        if not (run_dir / TPV).is_file():
            raise UserError(f"run {run_dir.name} has no {TPV}; pass completed stage-1 runs")
        loaded.append((run_dir, *load_tpv(run_dir / TPV)))
    check_compatible([meta for _, _, meta in loaded])
    tasks_seen = [meta["task"] for _, _, meta in loaded]
    return {
        (meta["task"] if tasks_seen.count(meta["task"]) == 1 else run_dir.name): (run_dir, vector, meta)
        for run_dir, vector, meta in loaded
    }


@tpv_app.command("sim")
def tpv_sim(
    runs: Annotated[list[str], typer.Argument(help="Stage-1 runs: ids, unique parts, or task names.")],
    metric: Annotated[str, typer.Option(help="dot (DTVG eq. 2) or cosine (of mean-pooled vectors).")] = "dot",
    runs_dir: RunsDir = None,
    as_json: JsonFlag = False,
) -> None:
    """The task-similarity matrix of stage-1 task prompt vectors (the papers' Figures 10-11)."""
    from dtvg_engine.method.grouping import similarity_matrix

    if metric not in ("dot", "cosine"):
        raise UserError(f"unknown --metric {metric!r}; use dot or cosine")
    vectors = _vectors(runs_root(runs_dir), runs)
    names, matrix = similarity_matrix({name: v for name, (_, v, _) in vectors.items()}, metric)
    if as_json:
        print_json({"metric": metric, "tasks": names, "matrix": matrix})
        return
    table = Table("", *names, title=f"TPV similarity ({metric})")
    for name, row in zip(names, matrix, strict=True):
        table.add_row(name, *(f"{v:.4g}" for v in row))
    out.print(table)


@tpv_app.command("combine")
def tpv_combine(
    expression: Annotated[
        str, typer.Argument(help='TPV arithmetic, e.g. "mnli + qnli - sst2" or "0.5*mnli".')
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the new prompt.")],
    scale: Annotated[float, typer.Option(help="Multiply the combined vector by this.")] = 1.0,
    runs_dir: RunsDir = None,
) -> None:
    """Write P_init + scale·(combination of TPVs) as a prompt usable with `run stage1 --init-prompt`.

    Names are tasks (their newest completed stage-1 run) or run ids.
    """
    from safetensors.torch import load_file, save_file

    from dtvg_engine.method.tpv import combine, parse_expression
    from dtvg_engine.train.prompts import check_tpv_init

    if not math.isfinite(scale):
        raise UserError(f"--scale must be a finite number (got {scale})")
    if out_file.is_dir():
        raise UserError(
            f"--out {out_file} is a folder; give a file name such as {out_file / 'prompt.safetensors'}"
        )
    check_output(out_file)
    root = runs_root(runs_dir)
    terms = parse_expression(expression)
    vectors = _vectors(root, [name for _, name in terms])
    by_run = {run_dir.name: (vector, meta) for run_dir, vector, meta in vectors.values()}
    picked = [by_run[find_run(root, _newest_stage1(root, name)).name] for _, name in terms]
    meta = picked[0][1]
    init_file = root / "_inits" / f"{meta['init_id']}.safetensors"
    if not init_file.is_file():
        raise UserError(f"the shared init {init_file} is missing; it is written by stage-1 runs")
    for _, meta in picked:
        check_tpv_init(root, meta)
    p_init = load_file(regular_file(init_file))["prompt"]
    prompt = p_init + combine(
        [(coef, vector) for (coef, _), (vector, _) in zip(terms, picked, strict=True)], scale
    )
    if not bool(prompt.isfinite().all()):
        raise UserError(
            f"P_init + {scale} * ({expression}) is not finite; use smaller coefficients or --scale"
        )
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out_file) as tmp:  # whole or not at all, and with your umask's mode, not 0600
            save_file(
                {"prompt": prompt.contiguous()},
                tmp,
                metadata={"init_id": str(meta["init_id"]), "expression": expression, "scale": str(scale)},
            )
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out_file}: {out_file.parent} is not a folder") from None
    except OSError as exc:
        raise UserError(f"--out {out_file}: cannot write there ({exc.strerror or exc})") from None
    print(f"wrote {out_file} = P_init + {scale} * ({expression})")


def _newest_stage1(root: Path, name: str) -> str:
    """A run id for an expression term: the name itself if it is a run, else the task's newest stage-1 run."""
    from dtvg_engine.runs.runfolder import list_run_dirs

    for run_dir in reversed(list_run_dirs(root)):
        config = read_config(run_dir)
        if config.get("stage") == "stage1" and config.get("task") == name and (run_dir / TPV).is_file():
            return run_dir.name
    return name


@tpv_app.command("bank")
def tpv_bank(as_json: JsonFlag = False) -> None:
    """The source vectors shipped for stage 2: init, task, steps, validation and test scores."""
    from dtvg_engine.method import bank
    from dtvg_engine.studies.studyresults import pct

    vectors = bank.entries()
    if as_json:
        print_json([vector.row() for vector in vectors])
        return
    if not vectors:
        print(
            f"the source bank is empty: {bank.bank_dir()} holds no vectors (a maintainer ships them with "
            f"scripts/ship_bank.py; ${bank.BANK_ENV} names another bank)"
        )
        return
    table = Table("init", "task", "steps", "validation", "test", "constant", "exported", title="source bank")
    for vector in vectors:
        made = vector.provenance
        table.add_row(
            vector.init_id,
            vector.task,
            str(made.get("steps")),
            pct(vector.primary("validation")),
            pct(vector.primary("test")),
            pct(vector.constant),
            str(made.get("exported")),
        )
    out.print(table)
    out.print(f"from {bank.bank_dir()}", markup=False, highlight=False)
