"""`dtvg runs ...`: the history of runs (list, show, compare, report, export, stop, rm, tag, note)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.box import HEAVY_HEAD
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from dtvg_engine.cli.common import JsonFlag, RunsDir, out, print_json, runs_root
from dtvg_engine.errors import UserError
from dtvg_engine.runs import launcher, slurm
from dtvg_engine.runs.atomic import write_json_atomic, write_text_atomic
from dtvg_engine.runs.history import History
from dtvg_engine.runs.runactions import check_action
from dtvg_engine.runs.runfolder import (
    find_link,
    find_run,
    missing_stage1_runs,
    read_config,
    stage1_dependents,
    tail_log,
)
from dtvg_engine.runs.runmeta import clean_text, printable, update_meta
from dtvg_engine.runs.runowner import claim_run
from dtvg_engine.runs.runstatus import STATUSES, summarize

runs_app = typer.Typer(
    help="The history of runs: list, show, compare, report, export, stop, rm, tag.", no_args_is_help=True
)


COLUMNS = ("run_id", "stage", "method", "task", "model", "status", "executor", "best_metric", "step", "tags")


def show_table(docs: list[dict[str, Any]]) -> None:
    """The runs as a table of whole values, never cut to "s…": every column when the output is not a
    terminal (a pipe, a file), else the columns that fit the terminal's width, from the left.

    Drawn line by line in rich's table box: every value is one line of known width, and rich's `Table`
    would measure and render each cell again (seconds for 5,000 runs).
    """
    rows = [[_cell(doc, key) for key in COLUMNS] for doc in docs]
    widths = [max((cell_len(row[i]) for row in rows), default=0) for i in range(len(COLUMNS))]
    widths = [max(width, len(key)) for width, key in zip(widths, COLUMNS, strict=True)]
    shown = _fitting(widths, out.width) if out.is_terminal else list(range(len(COLUMNS)))
    box = HEAVY_HEAD.substitute(out.options)
    spans = [widths[i] + 2 for i in shown]

    def line(values: list[str], left: str, between: str, right: str) -> str:
        padded = (f" {values[i]}{' ' * (widths[i] - cell_len(values[i]))} " for i in shown)
        return left + between.join(padded) + right

    lines = [
        box.get_top(spans),
        line(list(COLUMNS), box.head_left, box.head_vertical, box.head_right),
        box.get_row(spans, "head"),
        *(line(row, box.mid_left, box.mid_vertical, box.mid_right) for row in rows),
        box.get_bottom(spans),
    ]
    typer.echo("\n".join(lines))


def _cell(doc: dict[str, Any], key: str) -> str:
    """A run's value in column `key`, as shown: with terminal escapes written out (`printable`)."""
    value = doc.get(key)
    if key == "best_metric" and value is not None:
        value = f"{value:.4f}"
    elif key == "tags":
        value = ",".join(value or [])
    elif key == "step":
        value = f"{value or 0}/{doc.get('total_steps') or '?'}"
    elif key == "executor" and doc.get("job_id"):  # as the dashboard shows it
        value = f"{value} {doc['job_id']}"
    return "" if value is None else printable(str(value))


def _fitting(widths: list[int], room: int) -> list[int]:
    """The columns (by index, from the left; the first always) whose whole values fit `room` cells of
    a table with one space of padding each side and a border between columns."""
    shown, used = [0], widths[0] + 4
    for i, width in enumerate(widths[1:], start=1):
        if used + width + 3 <= room:
            shown.append(i)
            used += width + 3
    return shown


@runs_app.command("list")
def runs_list(
    runs_dir: RunsDir = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every run in the history index (rebuilt from the run folders when needed)."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status {status!r} is not a status; use one of {', '.join(STATUSES)}")
    history = History(runs_root(runs_dir))
    docs = history.all()
    for run_id, reason in history.skipped.items():  # one bad folder hides no other: name it, list the rest
        typer.echo(f"warning: run {run_id} is not listed: {reason}", err=True)
    if status:
        docs = [d for d in docs if d["status"] == status]
    print_json(docs) if as_json else show_table(docs)


@runs_app.command("show")
def runs_show(run: str, runs_dir: RunsDir = None, as_json: JsonFlag = False) -> None:
    """One run: its summary, config and, if it failed, the end of its log."""
    run_dir = find_run(runs_root(runs_dir), run)
    doc = summarize(run_dir).to_dict()
    slurm_log = slurm.log_path(slurm.read_job(run_dir))
    if slurm_log is not None:  # why Slurm ended a job (a kill, srun's errors) is only there
        doc["slurm_log"] = str(slurm_log)
    doc["config"] = read_config(run_dir)
    missing = missing_stage1_runs(run_dir.parent, doc["config"])
    if missing:  # removed since: what it transferred from can no longer be looked at
        doc["missing_stage1_runs"] = missing
    if as_json:
        print_json(doc)
        return
    for key, value in doc.items():
        if key != "config":
            out.print(Text.assemble((key, "bold"), ": ", printable(_readable(key, value))), highlight=False)
    out.print_json(data=doc["config"])
    if doc["status"] in ("failed", "killed"):
        logs = [("worker.log", tail_log(run_dir))]
        if slurm_log is not None:
            logs.append((f"Slurm log {slurm_log}", tail_log(slurm_log.parent, name=slurm_log.name)))
        for name, lines in logs:
            out.print(Text.assemble((f"{name} (last lines)", "bold")), highlight=False)
            for line in lines:
                out.print(printable(line), markup=False, highlight=False)


def _readable(key: str, value: Any) -> str:
    """Summary values as a person reads them: local dates, rounded seconds, plain lists."""
    if value is None:
        return "—"
    if key in ("started", "ended"):
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if key == "duration":
        return f"{value:.0f} s"
    if key == "tags":
        return ", ".join(value)
    if key == "missing_stage1_runs":
        named = ", ".join(f"{run_id} ({task})" for task, run_id in value.items())
        return f"{named}: no longer in the runs directory"
    return str(value)


@runs_app.command("stop")
def runs_stop(
    run: str, runs_dir: RunsDir = None, kill: Annotated[bool, typer.Option("--kill")] = False
) -> None:
    """Stop a detached run: it checkpoints and ends as `stopped` (--kill ends its whole process group now)."""
    run_dir = find_run(runs_root(runs_dir), run)
    check_action(run_dir, "stop")
    if not (launcher.kill_run(run_dir) if kill else launcher.stop_run(run_dir)):
        check_action(run_dir, "stop")  # it ended meanwhile: say so
        raise UserError(f"run {run_dir.name}: its worker could not be signalled; try again")
    print(f"{'killed' if kill else 'stopping'} {printable(run_dir.name)}")


@runs_app.command("rm")
def runs_rm(
    run: str,
    runs_dir: RunsDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Remove a stage-1 run even though stage-2 runs transfer from it.")
    ] = False,
) -> None:
    """Delete a run's folder and its history entry; not while a worker owns it, nor (without --force) a
    stage-1 run that stage-2 runs transfer from.

    A symbolic link in the runs directory is removed alone: what it points to is left as it is.
    """
    root = runs_root(runs_dir)
    link = find_link(root, run)
    if link is not None:
        target = os.readlink(link)
        link.unlink()
        History(root).remove(link.name)
        print(printable(f"removed the link {link.name} (its target {target} is left as it is)"))
        return
    run_dir = find_run(root, run)
    check_action(run_dir, "rm")
    dependents = stage1_dependents(root, run_dir.name)
    if dependents:
        named = ", ".join(dependents[:5]) + (", …" if len(dependents) > 5 else "")
        line = f"run {run_dir.name} is the stage-1 run of {len(dependents)} stage-2 run(s) ({named})"
        if not force:
            raise UserError(printable(f"{line}; their reports need it. Remove it anyway with --force"))
        typer.echo(printable(f"warning: {line}, which will show it missing"), err=True)
    record = slurm.read_job(run_dir)
    claim = claim_run(run_dir)  # and no worker starts on it while it goes
    try:
        shutil.rmtree(run_dir)
    except OSError as e:
        raise UserError(f"cannot remove {run_dir}: {e.strerror}") from e
    finally:
        os.close(claim)
    slurm.remove_job_files(record, root)  # its jobs' files under `_slurm/`
    History(root).remove(run_dir.name)
    print(f"removed {printable(run_dir.name)}")


@runs_app.command("tag", context_settings={"ignore_unknown_options": True})
def runs_tag(
    run: str,
    tags: Annotated[list[str], typer.Argument(help="Tags to add (prefix with - to remove).")],
    runs_dir: RunsDir = None,
) -> None:
    """Add or remove tags of a run (safe to run side by side: no change is lost)."""
    root = runs_root(runs_dir)
    run_dir = find_run(root, run)
    meta = update_meta(
        run_dir,
        add_tags=[t for t in tags if not t.startswith("-")],
        remove_tags=[t[1:] for t in tags if t.startswith("-")],
    )
    History(root).upsert(run_dir)
    print(printable(" ".join(meta["tags"])))


@runs_app.command("note")
def runs_note(run: str, note: str, runs_dir: RunsDir = None) -> None:
    """Set the free-text note of a run."""
    root = runs_root(runs_dir)
    run_dir = find_run(root, run)
    update_meta(run_dir, note=note)
    History(root).upsert(run_dir)


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
    root = runs_root(runs_dir)
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
        print_json(
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
    from dtvg_engine.runs.events import read_state
    from dtvg_engine.runs.runfolder import EVENTS

    test = read_state(run_dir / EVENTS).last_eval.get("test")
    return test.metrics if test is not None else {}


@runs_app.command("report")
def runs_report(
    experiment: Annotated[Path, typer.Argument(help="The study's experiment file (TOML).")],
    runs_dir: RunsDir = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the table as JSON: rows (target, method, mean, std, seeds), constant (target: "
            "best constant score) and stage1 (task, role, seed, test, constant); scores as fractions."
        ),
    ] = None,
) -> None:
    """A study's finished runs as Markdown: scores, stage 1, similarities, source picks, groups."""
    from dtvg_engine.studies.report import report
    from dtvg_engine.studies.studyfile import load_experiment

    text, table = report(load_experiment(experiment), runs_root(runs_dir))
    if json_out:  # the document the dashboard's study view exports too (studyresults.Results)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_out, table.document())
    typer.echo(text)


@runs_app.command("export")
def runs_export(
    out_file: Annotated[Path, typer.Option("--out", help="A .json or .csv file.")],
    runs_dir: RunsDir = None,
) -> None:
    """Write the history index, with each run's test metrics, to JSON or CSV."""
    if out_file.suffix not in (".json", ".csv"):
        raise UserError(f"--out {out_file}: use a .json or .csv file name")
    root = runs_root(runs_dir)
    docs = History(root).all()
    rows = [{**doc, "test": _test_metrics(root / doc["run_id"])} for doc in docs]
    if out_file.suffix == ".json":
        text = json.dumps(rows, indent=2, default=str) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["run_id"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
        text = buffer.getvalue()
    try:
        write_text_atomic(out_file, clean_text(text))  # an older index may hold undecodable note bytes
    except OSError as e:
        raise UserError(f"cannot write --out {out_file}: {e.strerror}") from e
    print(f"wrote {len(rows)} runs to {out_file}")
