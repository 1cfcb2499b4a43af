"""`dtvg runs report study.toml`: what a study's finished runs show, as Markdown.

The pipeline's results table says which method scored best. Reading the papers' claims needs more: how
well stage 1 learned each task, how similar the stage-1 vectors are (DTVG's eq. 2 and SPoT's cosine),
which source each one-for-one method picked, how methods differ seed by seed (every method of a seed sees
the same shots and split), and which sources the grouped methods chose at each step and when the group
stopped changing. This module gathers all of that from the run folders; it trains nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from dtvg_engine.method import bank, grouping, method_registry
from dtvg_engine.method.bank import BankVector
from dtvg_engine.method.methods import rank_sources
from dtvg_engine.runs.events import read_state
from dtvg_engine.runs.runfolder import EVENTS, INITS_DIR, TPV, read_config
from dtvg_engine.runs.safefiles import regular_file
from dtvg_engine.studies.study import Runs, Study, find_study
from dtvg_engine.studies.studyfile import StudySpec
from dtvg_engine.studies.studyresults import (
    Results,
    bank_row,
    group_steps,
    markdown_table,
    pct,
    recorded_constant,
    results,
    source_shares,
    stage1_row,
    test_score,
    trajectory,
)
from dtvg_engine.train import metrics, tasks


def constant_score(run_dir: Path) -> float | None:
    """The best test score a constant prediction gets on this run's test split (a stage-2 run's target,
    a stage-1 run's task): the floor a model that learned nothing but the label prior reaches (the
    majority class for accuracy). The value the run recorded with its split, else computed from the data;
    None for a generation task, where no constant answer makes a floor.
    """
    from dtvg_engine.train.data import load_splits

    config = read_config(run_dir)
    tasks.adopt(config, str(run_dir / "config.json"))
    recorded = recorded_constant(config)
    if recorded is not None:
        return recorded
    task = tasks.get_task(config.get("target") or config["task"])
    if task.generation:
        return None
    splits = load_splits(
        task.name,
        config["data_dir"],
        seed=config["seed"],
        k_shot=config["k_shot"],
        max_eval=config["max_eval"],
    )
    golds = [tasks.label_of(task, row) for row in splits.test]  # trec keeps its label in coarse_label
    return metrics.constant_score(task, golds)


PAIRS = (
    ("dtvg", "pt"),
    ("dtvg", "pt-fair"),
    ("dtvg:prefix", "pt"),
    ("dtvg:prefix", "pt-fair"),
    ("dtvg", "dtvg:prefix"),
    ("dtvg", "spot"),
    ("dtvg", "tpv-top1"),
    ("dtvg", "tpv-sum"),
    ("dtvg", "all-sources"),
    ("dtvg", "fixed-group"),
    ("tpv-top1", "spot"),
    ("dtvg", "only-target"),
    ("dtvg:prefix", "only-target"),
    ("dtvg", "T_t"),
)
"""The comparisons the papers' claims rest on. `T_t` is the target's own stage-1 run for the seed:
prompt tuning on the same shots, with no source; `only-target` continues T_t for stage 2's steps, so
"dtvg − only-target" is what the sources add at the same budget."""


def paired_section(study: Study, test: Callable[[Path], float | None]) -> list[str]:
    """Per target, method A − method B in test points seed by seed (same shots and split within a seed)."""

    tests = {key: test(run) for key, run in study.runs.items()}
    tests |= {(target, "T_t", seed): test(run) for (target, seed), run in study.targets.items()}

    rows = []
    methods = {*study.spec.methods, "T_t"}
    for a, b in [(a, b) for a, b in PAIRS if a in methods and b in methods]:
        row, every = [f"{a} − {b}"], []
        for target in study.spec.targets:
            pairs = [
                (tests.get((target, a, seed)), tests.get((target, b, seed))) for seed in study.spec.seeds
            ]
            diffs = [100 * (x - y) for x, y in pairs if x is not None and y is not None]
            every += diffs
            seeds = ", ".join(f"{d:+.1f}" for d in diffs)
            row.append(f"{sum(diffs) / len(diffs):+.1f} ({seeds})" if diffs else "—")
        row.append(f"{sum(d > 0 for d in every)} / {every.count(0)} / {sum(d < 0 for d in every)}")
        rows.append(row)
    return markdown_table(["A − B", *study.spec.targets, "seeds A won / tied / lost"], rows)


def stage1_section(
    records: list[tuple[Path, dict[str, Any]]], banked: list[BankVector], runs: Runs
) -> list[str]:
    """How well stage 1 learned each task: the vectors every transfer starts from (the source bank's
    included, with the scores it shipped them with), each against its test split's constant floor.

    A target's stage-1 run is plain prompt tuning on its k shots for the stage-1 steps: its test score is
    what the target reaches with no source at all.
    """
    rows = [
        stage1_row(
            record["task"],
            "source" if record["role"] == "source" else f"target, seed {record['seed']}",
            run_dir,
            runs,
            record["test"],
            record["constant"],
        )
        for run_dir, record in records
    ] + [bank_row(vector) for vector in banked]
    cells = [
        [row.task, row.role, row.data, f"`{row.run_id}`", str(row.steps), pct(row.best), pct(row.test)]
        + [pct(row.constant)]
        for row in rows
    ]
    header = ["task", "role", "data", "run", "steps", "best validation", "test", "constant"]
    return markdown_table(header, cells)


def tested_metrics(run_dir: Path) -> dict[str, float]:
    """Every metric of a run's test evaluation (at its best validation checkpoint)."""
    test = read_state(run_dir / EVENTS).last_eval.get("test")
    return dict(test.metrics) if test is not None else {}


def metrics_section(study: Study) -> list[str]:
    """Each metric the targets report, mean ± std over seeds per method: the score is their mean, and
    a paper may report one of them (DTVG reports CB's accuracy)."""
    spec = study.spec
    rows = []
    for target in spec.targets:
        for name in tasks.get_task(target).metrics:
            row = [target, name]
            for method in spec.methods:
                runs = [run for (t, m, _), run in study.runs.items() if (t, m) == (target, method)]
                values = [v for v in (tested_metrics(run).get(name) for run in runs) if v is not None]
                spread = statistics.pstdev(values) if values else None
                row.append(f"{pct(statistics.fmean(values))} ± {pct(spread)}" if values else "—")
            rows.append(row)
    return markdown_table(["target", "metric", *spec.methods], rows)


def _vectors(study: Study, runs_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, int], Any], Any]:
    """The sources' TPVs by task, the targets' by (task, seed), and the shared P_init they start from."""
    from safetensors.torch import load_file

    from dtvg_engine.method.tpv import load_tpv
    from dtvg_engine.train.prompts import check_tpv_init

    loaded = {
        run_dir: load_tpv(run_dir / TPV) for run_dir in [*study.sources.values(), *study.targets.values()]
    }
    banked = {task: bank.load_vector(vector) for task, vector in study.banked.items()}
    (init_id,) = {meta["init_id"] for _, meta in [*loaded.values(), *banked.values()]}  # one init
    for _, meta in loaded.values():
        check_tpv_init(runs_dir, meta)
    p_init = load_file(regular_file(runs_dir / INITS_DIR / f"{init_id}.safetensors"))["prompt"]
    sources = {task: loaded[run_dir][0] for task, run_dir in study.sources.items()}
    sources |= {task: vector for task, (vector, _) in banked.items()}
    targets = {key: loaded[run_dir][0] for key, run_dir in study.targets.items()}
    return sources, targets, p_init


def similarity_section(vectors: dict[str, Any]) -> list[str]:
    """The full similarity matrix of the stage-1 vectors, by eq. 2 and by cosine."""
    lines = []
    for metric, title in (("dot", "DTVG eq. 2 (dot of token sums / r²)"), ("cosine", "cosine")):
        names, matrix = grouping.similarity_matrix(vectors, metric)
        rows = [[name, *(f"{v:.3g}" for v in row)] for name, row in zip(names, matrix, strict=True)]
        lines += [f"**{title}**", "", *markdown_table(["", *names], rows), ""]
    return lines


def picks_section(
    study: Study, sources: dict[str, Any], targets: dict[tuple[str, int], Any], p_init: Any
) -> list[str]:
    """Per target and seed: how `tpv-top1` (eq. 2) and `spot` (prompt cosine) rank the sources."""
    rows = []
    for (target, seed), vector in targets.items():
        vectors = {**sources, target: vector}
        row = [target, str(seed)]
        for method in ("tpv-top1", "spot"):
            ranking = method_registry.get(method).ranking
            ranked = rank_sources(ranking, list(sources), p_init, vectors, target)
            row.append(", ".join(f"{s} {v:.3g}" for s, v in ranked))
        rows.append(row)
    return markdown_table(
        ["target", "seed", "eq. 2 ranking (tpv-top1 takes the first)", "SPoT cosine ranking (spot)"], rows
    )


def _group_text(group: tuple[str, ...]) -> str:
    return "+".join(group) if group else "∅"


def groups_section(study: Study, method: str) -> list[str]:
    """Per target and seed: the group's changes, when it settled, and how often each source was in it."""
    sources = study.spec.sources
    rows = []
    for target in study.spec.targets:
        for seed in study.spec.seeds:
            run_dir = study.runs.get((target, method, seed))
            if run_dir is None:
                continue
            steps = group_steps(run_dir)
            changes = trajectory(steps)
            shares = source_shares(steps, sources)
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
    return markdown_table(header, rows)


def report(spec: StudySpec, runs_dir: Path) -> tuple[str, Results]:
    """The Markdown report of a study, and its results table (what `--json-out` writes of it)."""
    runs = Runs.read(runs_dir)
    study = find_study(spec, runs)
    test = cache(test_score)  # each events file read once
    table = results(study, runs, test, constant_score, tested_metrics)
    lines = [
        f"# Study `{spec.name}`: {len(study.runs)} finished stage-2 runs",
        "",
        *table.table_lines(),
        "",
        "## Every metric (test, mean ± std over seeds; the score above is the mean of the task's metrics)",
        "",
        *metrics_section(study),
        "",
        "## Stage 1",
        "",
        *stage1_section(table.stage1, list(study.banked.values()), runs),
        "",
    ]
    for run_id, task in study.missing.items():
        lines += [
            f"Missing: stage-1 run {run_id} ({task}), which stage-2 runs transferred from, is no longer in "
            f"{runs_dir}/; its row, similarities and picks are left out.",
            "",
        ]
    if (study.sources or study.banked) and study.targets:
        sources, targets, p_init = _vectors(study, runs_dir)
        first_seed = {target: vector for (target, seed), vector in targets.items() if seed == spec.seeds[0]}
        lines += [
            f"## Similarity of the stage-1 task prompt vectors (targets: seed {spec.seeds[0]})",
            "",
            *similarity_section({**sources, **first_seed}),
            "## One-for-one source picks",
            "",
            *picks_section(study, sources, targets, p_init),
            "",
        ]
    lines += [
        "## Paired differences (test points, mean over seeds and each seed's difference)",
        "",
        *paired_section(study, test),
        "",
    ]
    grouped = [m for m in spec.methods if method_registry.parse(m)[0].group_rule == "setting"]
    for method in grouped:  # dtvg and fixed-group, with each grouping rule the study lists
        if any(key[1] == method for key in study.runs):
            lines += [f"## Source groups of `{method}`", "", *groups_section(study, method), ""]
    return "\n".join(lines), table
