"""`dtvg runs report study.toml`: what a study's finished runs show, as Markdown.

The pipeline's results table says which method scored best. Reading the papers' claims needs more: how
well stage 1 learned each task, how similar the stage-1 vectors are (DTVG's eq. 2 and SPoT's cosine),
which source each one-for-one method picked, and which sources the grouped methods chose at each step and
when the group stopped changing. This module gathers all of that from the run folders; it trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtvg_engine import grouping, pipeline
from dtvg_engine.events import read_events
from dtvg_engine.methods import rank_sources
from dtvg_engine.runfolder import EVENTS, INITS_DIR, TPV, list_run_dirs, read_config, summarize

SETTINGS = ("model", "prompt_length")
"""Top-level study settings a stage-2 run must share to count (data_dir and device may differ)."""


@dataclass
class Study:
    """A study file and the finished runs that belong to it."""

    spec: dict[str, Any]
    runs: dict[tuple[str, str, int], Path]
    """(target, method, seed) → the newest completed stage-2 run with the study's settings."""
    stage1: dict[str, Path]
    """Task → the stage-1 run those stage-2 runs used (sources first, then targets)."""


def _belongs(config: dict[str, Any], spec: dict[str, Any]) -> bool:
    if config.get("stage") != "stage2" or config.get("sources") not in (spec["sources"], []):
        return False  # methods that use no sources (pt) record none
    wanted = {key: spec[key] for key in SETTINGS if key in spec} | spec.get("stage2", {})
    return all(config.get(key) == value for key, value in wanted.items())


def find_study(spec: dict[str, Any], runs_dir: Path) -> Study:
    """The study's completed stage-2 runs (newest wins) and the stage-1 runs behind them."""
    runs: dict[tuple[str, str, int], Path] = {}
    for run_dir in list_run_dirs(runs_dir):  # oldest first, so a newer run replaces an older one
        config = read_config(run_dir)
        key = (config.get("target"), config.get("method"), config.get("seed"))
        if (
            key[0] in spec["targets"]
            and key[1] in spec["methods"]
            and key[2] in spec["seeds"]
            and _belongs(config, spec)
            and summarize(run_dir).status == "completed"
        ):
            runs[key] = run_dir
    stage1: dict[str, Path] = {}
    for run_dir in runs.values():
        for task, run_id in read_config(run_dir)["stage1_runs"].items():
            stage1.setdefault(task, runs_dir / run_id)
    order = spec["sources"] + spec["targets"]
    return Study(spec, runs, {task: stage1[task] for task in order if task in stage1})


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def results_section(results: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Targets × methods, test score mean ± std over seeds, best per target in bold, and the average."""
    cell = {(r["target"], r["method"]): r for r in results["rows"]}
    rows = []
    for target in spec["targets"]:
        row = [f"{target} ({cell[target, spec['methods'][0]]['metric']})"]
        for method in spec["methods"]:
            r = cell[target, method]
            text = "—" if r["mean"] is None else f"{_pct(r['mean'])} ± {_pct(r['std'])}"
            if r["mean"] is not None and r["seeds"] < len(spec["seeds"]):
                text += f" ({r['seeds']} seeds)"
            row.append(f"**{text}**" if r.get("best") else text)
        rows.append(row)
    averages = ["average"]
    for method in spec["methods"]:
        means = [cell[t, method]["mean"] for t in spec["targets"]]
        averages.append("—" if None in means else _pct(sum(means) / len(means)))
    rows.append(averages)
    return _table(["target", *spec["methods"]], rows)


def stage1_section(study: Study) -> list[str]:
    """How well stage 1 learned each task: the vectors every transfer starts from."""
    rows = []
    for task, run_dir in study.stage1.items():
        config, summary = read_config(run_dir), summarize(run_dir)
        role = "source" if task in study.spec["sources"] else f"target ({config.get('k_shot')}-shot)"
        test = pipeline.test_primary(run_dir)
        rows.append(
            [task, role, f"`{run_dir.name}`", str(config["steps"]), _pct(summary.best_metric), _pct(test)]
        )
    return _table(["task", "role", "run", "steps", "best validation", "test"], rows)


def _vectors(study: Study) -> tuple[dict[str, Any], Any]:
    """The stage-1 TPVs by task, and the shared P_init they were made from."""
    from safetensors.torch import load_file

    from dtvg_engine.tpv import load_tpv

    vectors, init_ids = {}, set()
    for task, run_dir in study.stage1.items():
        vectors[task], meta = load_tpv(run_dir / TPV)
        init_ids.add(meta["init_id"])
    (init_id,) = init_ids  # the pipeline builds every run of a study from one initialization
    runs_dir = next(iter(study.stage1.values())).parent
    return vectors, load_file(runs_dir / INITS_DIR / f"{init_id}.safetensors")["prompt"]


def similarity_section(vectors: dict[str, Any]) -> list[str]:
    """The full similarity matrix of the stage-1 vectors, by eq. 2 and by cosine."""
    lines = []
    for metric, title in (("dot", "DTVG eq. 2 (dot of token sums / r²)"), ("cosine", "cosine")):
        names, matrix = grouping.similarity_matrix(vectors, metric)
        rows = [[name, *(f"{v:.3g}" for v in row)] for name, row in zip(names, matrix, strict=True)]
        lines += [f"**{title}**", "", *_table(["", *names], rows), ""]
    return lines


def picks_section(study: Study, vectors: dict[str, Any], p_init: Any, results: dict[str, Any]) -> list[str]:
    """Per target: how `tpv-top1` (eq. 2) and `spot` (prompt cosine) rank the sources, and what came of it."""
    score = {(r["target"], r["method"]): r["mean"] for r in results["rows"]}
    rows = []
    for target in study.spec["targets"]:
        if target not in vectors:
            continue
        row = [target]
        for method in ("tpv-top1", "spot"):
            ranked = rank_sources(method, study.spec["sources"], p_init, vectors, target)
            row.append(", ".join(f"{s} {v:.3g}" for s, v in ranked))
            row.append(_pct(score.get((target, method))))
        rows.append(row)
    return _table(["target", "eq. 2 ranking", "tpv-top1", "SPoT cosine ranking", "spot"], rows)


def group_steps(run_dir: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(step, selected sources) of every `group` event of a run."""
    events, _ = read_events(run_dir / EVENTS)
    return [(e["step"], tuple(e["selected"])) for e in events if e["type"] == "group"]


def trajectory(steps: list[tuple[int, tuple[str, ...]]]) -> list[tuple[int, tuple[str, ...]]]:
    """The steps where the group changed as a set (and the first); a mere re-ranking is no change."""
    return [
        (step, group) for i, (step, group) in enumerate(steps) if i == 0 or set(group) != set(steps[i - 1][1])
    ]


def _group_text(group: tuple[str, ...]) -> str:
    return "+".join(group) if group else "∅"


def groups_section(study: Study, method: str) -> list[str]:
    """Per target and seed: the group's changes, when it settled, and how often each source was in it."""
    sources = study.spec["sources"]
    rows = []
    for target in study.spec["targets"]:
        for seed in study.spec["seeds"]:
            run_dir = study.runs.get((target, method, seed))
            if run_dir is None:
                continue
            steps = group_steps(run_dir)
            changes = trajectory(steps)
            shares = [sum(s in group for _, group in steps) / len(steps) for s in sources]
            rows.append(
                [
                    target,
                    str(seed),
                    "; ".join(f"{step}: {_group_text(group)}" for step, group in changes),
                    str(len(changes) - 1),
                    f"{changes[-1][0]} of {steps[-1][0]}",
                    *(f"{share:.0%}" for share in shares),
                ]
            )
    header = ["target", "seed", "group from step", "changes", "settled at", *(f"{s} in" for s in sources)]
    return _table(header, rows)


def report(spec: dict[str, Any], runs_dir: Path) -> tuple[str, dict[str, Any]]:
    """The Markdown report of a study and its results table (the pipeline's rows)."""
    study = find_study(spec, runs_dir)
    results = pipeline.results_table(spec, list(study.runs.values()))
    lines = [
        f"# Study `{spec['name']}`: {len(study.runs)} finished stage-2 runs",
        "",
        "## Test score (mean ± std over seeds, best per target in bold)",
        "",
        *results_section(results, spec),
        "",
        "## Stage 1",
        "",
        *stage1_section(study),
        "",
    ]
    if study.stage1:
        vectors, p_init = _vectors(study)
        lines += ["## Similarity of the stage-1 task prompt vectors", "", *similarity_section(vectors)]
        if {"tpv-top1", "spot"} & set(spec["methods"]):
            lines += ["## One-for-one source picks", "", *picks_section(study, vectors, p_init, results), ""]
    for method in ("dtvg", "fixed-group"):
        if any(key[1] == method for key in study.runs):
            lines += [f"## Source groups of `{method}`", "", *groups_section(study, method), ""]
    return "\n".join(lines), results
