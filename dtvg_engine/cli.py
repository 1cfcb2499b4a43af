"""`dtvg`: the headless command line (DESIGN §6).

Exit codes: 0 ok, 1 a run failed, 2 bad input. Bad input is a `UserError`, printed as one line.
Heavy imports (torch, transformers) happen inside the commands that need them, so listing runs is quick.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dtvg_engine import config as configs
from dtvg_engine import launcher
from dtvg_engine.errors import UserError
from dtvg_engine.history import History
from dtvg_engine.runfolder import (
    TPV,
    create_run,
    default_runs_dir,
    find_run,
    read_config,
    summarize,
    tail_log,
    update_meta,
)

app = typer.Typer(
    help="DTVG Studio: multi-task soft-prompt transfer, headless.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
run_app = typer.Typer(
    help="Start runs: stage 1, stage 2, pipelines; resume stopped ones.", no_args_is_help=True
)
runs_app = typer.Typer(
    help="The history of runs: list, show, compare, export, stop, rm, tag.", no_args_is_help=True
)
tpv_app = typer.Typer(help="Task prompt vectors: show, similarity, arithmetic.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(runs_app, name="runs")
app.add_typer(tpv_app, name="tpv")

out = Console()

RunsDir = Annotated[Path, typer.Option("--runs-dir", envvar="DTVG_RUNS_DIR", help="Where run folders live.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _runs_dir(path: Path | None) -> Path:
    path = Path(path or default_runs_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- dtvg run -----------------------------------------------------------------------------------------


@run_app.command("stage1")
def run_stage1(
    tasks: Annotated[list[str], typer.Argument(help="Tasks to tune a soft prompt for (one run each).")],
    model: Annotated[
        str, typer.Option(help="smollm2-135m, tiny-llama, tiny-t5, a path or an HF id.")
    ] = "smollm2-135m",
    prompt_length: Annotated[int, typer.Option(help="Soft prompt tokens r.")] = 100,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 100,
    batch_size: Annotated[int, typer.Option()] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 0.3,
    k_shot: Annotated[int | None, typer.Option(help="Train on K examples (class-stratified).")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every E steps.")] = 25,
    max_eval: Annotated[int, typer.Option(help="Cap validation/test examples.")] = 200,
    max_input_tokens: Annotated[int, typer.Option(help="Truncate inputs (from the left) to this.")] = 64,
    seed: Annotated[int, typer.Option(help="Data split, sampling and batch-order seed.")] = 0,
    init_seed: Annotated[int, typer.Option(help="Seed of the shared prompt initialization.")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(envvar="DTVG_DATA_DIR", help="Folder of <task>/*.jsonl.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    init_prompt: Annotated[
        Path | None, typer.Option(help="Start from a prompt written by `dtvg tpv combine`.")
    ] = None,
    runs_dir: RunsDir = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start workers in the background and return.")
    ] = False,
    jobs: Annotated[int, typer.Option(help="Runs at once.")] = 1,
) -> None:
    """Tune one soft prompt per task from the shared initialization and save its task prompt vector."""
    from dtvg_engine.data import default_data_dir, load_splits

    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs})")
    root = _runs_dir(runs_dir)
    data = Path(data_dir) if data_dir else default_data_dir()
    settings = _training_settings(locals(), data)
    settings["init_prompt"] = str(init_prompt.resolve()) if init_prompt else None
    if init_prompt:
        _check_init_prompt(init_prompt, configs.init_id(model, prompt_length, init_seed))
    planned = [configs.stage1_config(task, **settings) for task in tasks]
    for config in planned:  # read every task's data now: a bad file is an error here, not a failed run
        load_splits(config["task"], data, seed=seed, k_shot=k_shot, max_eval=max_eval)
    run_dirs = [create_run(root, "stage1", config["task"], config) for config in planned]
    _start(run_dirs, detach, jobs)


def _check_init_prompt(path: Path, wanted: str) -> None:
    """Refuse a `tpv combine` prompt made on another init before any run is created."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            made_from = (f.metadata() or {}).get("init_id")
    except (OSError, SafetensorError) as exc:
        raise UserError(f"--init-prompt {path}: not a prompt written by `dtvg tpv combine` ({exc})") from exc
    if made_from != wanted:
        raise UserError(f"--init-prompt {path} was made on init {made_from}; this run uses {wanted}")


def _training_settings(options: dict[str, Any], data: Path) -> dict[str, Any]:
    """The training settings among a command's options (same names as `config.TRAINING_DEFAULTS`)."""
    settings = {key: options[key] for key in configs.TRAINING_DEFAULTS if key in options}
    settings["data_dir"] = str(data.resolve())
    return settings


def _start(run_dirs: list[Path], detach: bool, jobs: int) -> None:
    """Launch created runs in the background, or follow them here until they end."""
    if detach:
        for run_dir in run_dirs:
            launcher.launch_worker(run_dir)
            print(run_dir.name)
        return
    from dtvg_engine.watch import run_foreground

    statuses = run_foreground(run_dirs, jobs)
    _show_table([summarize(d).to_dict() for d in run_dirs])
    if any(s != "completed" for s in statuses):
        for run_dir, status in zip(run_dirs, statuses, strict=True):
            if status == "failed":
                out.print(f"[red]{run_dir.name} failed:[/red] {summarize(run_dir).error}")
        raise typer.Exit(1)


@run_app.command("stage2")
def run_stage2(
    target: Annotated[str, typer.Option(help="The low-resource target task.")],
    method: Annotated[str, typer.Option(help=f"One of {', '.join(configs.METHODS)}.")] = "dtvg",
    sources: Annotated[str, typer.Option(help="Source tasks, comma-separated.")] = "",
    tpv: Annotated[
        list[str] | None, typer.Option("--tpv", help="Use these stage-1 runs (repeatable).")
    ] = None,
    grouping: Annotated[
        str, typer.Option(help="dtvg grouping: greedy (Algorithm 2), prefix, exhaustive.")
    ] = "greedy",
    lam: Annotated[float, typer.Option("--lambda", help="λ of TS + λ·KC (exhaustive grouping).")] = 1.0,
    source_scale_lr: Annotated[float, typer.Option(help="Learning rate of the source scales.")] = 0.4,
    model: Annotated[str, typer.Option(help="Must match the stage-1 runs.")] = "smollm2-135m",
    prompt_length: Annotated[int, typer.Option()] = 100,
    steps: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate of the target prompt and its scale.")] = 0.3,
    k_shot: Annotated[int | None, typer.Option(help="Train on K target examples.")] = None,
    eval_every: Annotated[int, typer.Option()] = 25,
    max_eval: Annotated[int, typer.Option()] = 200,
    max_input_tokens: Annotated[int, typer.Option()] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    init_seed: Annotated[int, typer.Option()] = 0,
    data_dir: Annotated[Path | None, typer.Option(envvar="DTVG_DATA_DIR")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    runs_dir: RunsDir = None,
    detach: Annotated[bool, typer.Option("--detach")] = False,
) -> None:
    """Tune the target with a transfer method over the finished stage-1 runs of the sources."""
    from dtvg_engine.data import default_data_dir, load_splits

    root = _runs_dir(runs_dir)
    data = Path(data_dir) if data_dir else default_data_dir()
    config = configs.stage2_config(
        target,
        [s.strip() for s in sources.split(",") if s.strip()],
        method,
        root,
        tpv_runs=tpv,
        grouping=grouping,
        source_scale_lr=source_scale_lr,
        **{"lambda": lam},
        **_training_settings(locals(), data),
    )
    load_splits(target, data, seed=seed, k_shot=k_shot, max_eval=max_eval)
    _start([create_run(root, "stage2", f"{target}-{method}", config)], detach, 1)


@run_app.command("pipeline")
def run_pipeline(
    experiment: Annotated[Path, typer.Argument(help="An experiment TOML file.")],
    runs_dir: RunsDir = None,
    jobs: Annotated[int | None, typer.Option(help="Runs at once (overrides the file).")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="DTVG_DATA_DIR")] = None,
) -> None:
    """Stage 1 for every task needed (reusing finished runs), then stage 2 for target × method × seed."""
    from dtvg_engine.pipeline import markdown, run_pipeline

    root = _runs_dir(runs_dir)
    results = run_pipeline(experiment, root, jobs, str(data_dir.resolve()) if data_dir else None)
    for line in results["report"]:
        out.print(line, markup=False, highlight=False)
    out.print(markdown(results), markup=False, highlight=False)
    out.print(f"results: {root / (results['name'] + '-results.md')} and .json")


@app.command("demo")
def demo(
    runs_dir: RunsDir = None,
    jobs: Annotated[int, typer.Option(help="Runs at once.")] = 1,
) -> None:
    """A complete small experiment on the bundled model and data: 3 sources, target rte, pt vs dtvg."""
    from importlib.resources import files

    from dtvg_engine.data import BUNDLED_DATA_DIR

    experiment = Path(str(files("dtvg_engine") / "experiments" / "demo.toml"))
    run_pipeline(experiment, runs_dir, jobs, BUNDLED_DATA_DIR)
    out.print(
        "open the dashboard to look at the runs: dtvg-tui" + (f" --runs-dir {runs_dir}" if runs_dir else "")
    )


@run_app.command("resume")
def run_resume(
    run: Annotated[str, typer.Argument(help="Run id (or a unique part of it).")],
    runs_dir: RunsDir = None,
    detach: Annotated[bool, typer.Option("--detach")] = False,
) -> None:
    """Continue a stopped or killed run from its last checkpoint."""
    run_dir = find_run(_runs_dir(runs_dir), run)
    status = summarize(run_dir).status
    if status not in ("stopped", "killed", "failed"):
        raise UserError(f"run {run_dir.name} is {status}; only stopped, killed or failed runs can be resumed")
    _start([run_dir], detach, 1)


# --- dtvg runs ----------------------------------------------------------------------------------------

COLUMNS = ("run_id", "stage", "method", "task", "model", "status", "best_metric", "step", "tags")


def _show_table(docs: list[dict[str, Any]]) -> None:
    table = Table()
    for key in COLUMNS:
        table.add_column(key, no_wrap=key in ("run_id", "status", "step"))
    for doc in docs:
        cells = []
        for key in COLUMNS:
            value = doc.get(key)
            if key == "best_metric" and value is not None:
                value = f"{value:.4f}"
            elif key == "tags":
                value = ",".join(value or [])
            elif key == "step":
                value = f"{value or 0}/{doc.get('total_steps') or '?'}"
            cells.append("" if value is None else str(value))
        table.add_row(*cells)
    out.print(table)


@runs_app.command("list")
def runs_list(
    runs_dir: RunsDir = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every run in the history index (rebuilt from the run folders when needed)."""
    docs = History(_runs_dir(runs_dir)).all()
    if status:
        docs = [d for d in docs if d["status"] == status]
    _print_json(docs) if as_json else _show_table(docs)


@runs_app.command("show")
def runs_show(run: str, runs_dir: RunsDir = None, as_json: JsonFlag = False) -> None:
    """One run: its summary, config and, if it failed, the end of its log."""
    run_dir = find_run(_runs_dir(runs_dir), run)
    doc = summarize(run_dir).to_dict()
    doc["config"] = read_config(run_dir)
    if as_json:
        _print_json(doc)
        return
    for key, value in doc.items():
        if key != "config":
            out.print(f"[bold]{key}[/bold]: {value}")
    out.print_json(data=doc["config"])
    if doc["status"] in ("failed", "killed"):
        out.print("[bold]worker.log (last lines)[/bold]")
        for line in tail_log(run_dir):
            out.print(line, markup=False, highlight=False)


@runs_app.command("stop")
def runs_stop(
    run: str, runs_dir: RunsDir = None, kill: Annotated[bool, typer.Option("--kill")] = False
) -> None:
    """Stop a detached run: it checkpoints and ends as `stopped` (--kill ends its whole process group now)."""
    run_dir = find_run(_runs_dir(runs_dir), run)
    sent = launcher.kill_run(run_dir) if kill else launcher.stop_run(run_dir)
    if not sent:
        raise UserError(f"run {run_dir.name} is not running ({summarize(run_dir).status})")
    print(f"{'killed' if kill else 'stopping'} {run_dir.name}")


@runs_app.command("rm")
def runs_rm(run: str, runs_dir: RunsDir = None) -> None:
    """Delete a finished run's folder and its history entry."""
    root = _runs_dir(runs_dir)
    run_dir = find_run(root, run)
    status = summarize(run_dir).status
    if status in ("running", "pending"):
        raise UserError(f"run {run_dir.name} is {status}; stop it first with `dtvg runs stop {run_dir.name}`")
    shutil.rmtree(run_dir)
    History(root).remove(run_dir.name)
    print(f"removed {run_dir.name}")


@runs_app.command("tag", context_settings={"ignore_unknown_options": True})
def runs_tag(
    run: str,
    tags: Annotated[list[str], typer.Argument(help="Tags to add (prefix with - to remove).")],
    runs_dir: RunsDir = None,
) -> None:
    """Add or remove tags of a run."""
    from dtvg_engine.runfolder import read_meta

    root = _runs_dir(runs_dir)
    run_dir = find_run(root, run)
    current = list(read_meta(run_dir).get("tags", []))
    for tag in tags:
        if tag.startswith("-"):
            current = [t for t in current if t != tag[1:]]
        elif tag not in current:
            current.append(tag)
    update_meta(run_dir, tags=current)
    History(root).upsert(run_dir)
    print(" ".join(current))


@runs_app.command("note")
def runs_note(run: str, note: str, runs_dir: RunsDir = None) -> None:
    """Set the free-text note of a run."""
    root = _runs_dir(runs_dir)
    run_dir = find_run(root, run)
    update_meta(run_dir, note=note)
    History(root).upsert(run_dir)


# --- dtvg tpv -----------------------------------------------------------------------------------------


@tpv_app.command("show")
def tpv_show(run: str, runs_dir: RunsDir = None, as_json: JsonFlag = False) -> None:
    """A task prompt vector's metadata and norms."""
    from dtvg_engine.tpv import load_tpv

    run_dir = find_run(_runs_dir(runs_dir), run)
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
        _print_json(info)
        return
    for key, value in info.items():
        out.print(f"[bold]{key}[/bold]: {value}")


def _vectors(root: Path, refs: list[str]) -> dict[str, tuple[Path, Any, dict[str, Any]]]:
    """Stage-1 TPVs by label (their task, or the run id when a task appears twice)."""
    from dtvg_engine.tpv import check_compatible, load_tpv

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
    from dtvg_engine.grouping import similarity_matrix

    if metric not in ("dot", "cosine"):
        raise UserError(f"unknown --metric {metric!r}; use dot or cosine")
    vectors = _vectors(_runs_dir(runs_dir), runs)
    names, matrix = similarity_matrix({name: v for name, (_, v, _) in vectors.items()}, metric)
    if as_json:
        _print_json({"metric": metric, "tasks": names, "matrix": matrix})
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

    from dtvg_engine.tpv import combine, parse_expression

    root = _runs_dir(runs_dir)
    terms = parse_expression(expression)
    vectors = _vectors(root, [name for _, name in terms])
    by_run = {run_dir.name: (vector, meta) for run_dir, vector, meta in vectors.values()}
    picked = [by_run[find_run(root, _newest_stage1(root, name)).name] for _, name in terms]
    meta = picked[0][1]
    init_file = root / "_inits" / f"{meta['init_id']}.safetensors"
    if not init_file.is_file():
        raise UserError(f"the shared init {init_file} is missing; it is written by stage-1 runs")
    p_init = load_file(init_file)["prompt"]
    prompt = p_init + combine(
        [(coef, vector) for (coef, _), (vector, _) in zip(terms, picked, strict=True)], scale
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"prompt": prompt.contiguous()},
        out_file,
        metadata={"init_id": str(meta["init_id"]), "expression": expression, "scale": str(scale)},
    )
    print(f"wrote {out_file} = P_init + {scale} * ({expression})")


def _newest_stage1(root: Path, name: str) -> str:
    """A run id for an expression term: the name itself if it is a run, else the task's newest stage-1 run."""
    from dtvg_engine.runfolder import list_run_dirs

    for run_dir in reversed(list_run_dirs(root)):
        config = read_config(run_dir)
        if config.get("stage") == "stage1" and config.get("task") == name and (run_dir / TPV).is_file():
            return run_dir.name
    return name


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    runs_dir: RunsDir = None,
    all_keys: Annotated[
        bool, typer.Option("--all", help="Show every config key, not only differing ones.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Runs side by side: best validation and test metrics, and the config keys that differ."""
    root = _runs_dir(runs_dir)
    if len(runs) < 2:
        raise UserError("give at least two runs to compare")
    dirs = [find_run(root, ref) for ref in runs]
    configs_ = [read_config(d) for d in dirs]
    summaries = [summarize(d).to_dict() for d in dirs]
    tests = [_test_metrics(d) for d in dirs]
    keys = sorted({k for c in configs_ for k in c} - {"run_id", "created"})
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs_}) > 1]
    shown = keys if all_keys else differing
    if as_json:
        _print_json(
            [
                {"run_id": d.name, "summary": s, "test": t, "config": {k: c.get(k) for k in shown}}
                for d, s, t, c in zip(dirs, summaries, tests, configs_, strict=True)
            ]
        )
        return
    table = Table("", *(d.name for d in dirs))
    table.add_row("status", *(s["status"] for s in summaries))
    table.add_row("best validation", *(_fmt(s["best_metric"]) for s in summaries))
    for metric in sorted({m for t in tests for m in t}):
        table.add_row(f"test {metric}", *(_fmt(t.get(metric)) for t in tests))
    for key in shown:
        table.add_row(key, *(json.dumps(c.get(key)) for c in configs_))
    out.print(table)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _test_metrics(run_dir: Path) -> dict[str, float]:
    """The test-split metrics a completed run reported last."""
    from dtvg_engine.events import read_events
    from dtvg_engine.runfolder import EVENTS

    events, _ = read_events(run_dir / EVENTS)
    tests = [e["metrics"] for e in events if e["type"] == "eval" and e.get("split") == "test"]
    return tests[-1] if tests else {}


@runs_app.command("export")
def runs_export(
    out_file: Annotated[Path, typer.Option("--out", help="A .json or .csv file.")],
    runs_dir: RunsDir = None,
) -> None:
    """Write the history index, with each run's test metrics, to JSON or CSV."""
    import csv

    root = _runs_dir(runs_dir)
    docs = History(root).all()
    rows = [{**doc, "test": _test_metrics(Path(doc["run_dir"]))} for doc in docs]
    if out_file.suffix == ".json":
        out_file.write_text(json.dumps(rows, indent=2, default=str))
    elif out_file.suffix == ".csv":
        with open(out_file, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run_id"])
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
                )
    else:
        raise UserError(f"--out {out_file}: use a .json or .csv file name")
    print(f"wrote {len(rows)} runs to {out_file}")


def main() -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
