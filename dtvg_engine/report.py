"""`dtvg runs report study.toml`: what a study's finished runs show, as Markdown.

The pipeline's results table says which method scored best. Reading the papers' claims needs more: how
well stage 1 learned each task, how similar the stage-1 vectors are (DTVG's eq. 2 and SPoT's cosine),
which source each one-for-one method picked, how methods differ seed by seed (every method of a seed sees
the same shots and split), and which sources the grouped methods chose at each step and when the group
stopped changing. This module gathers all of that from the run folders; it trains nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtvg_engine import grouping, method_registry, metrics, pipeline, tasks
from dtvg_engine.events import Group, read_events, read_state
from dtvg_engine.methods import rank_sources
from dtvg_engine.runfolder import EVENTS, INITS_DIR, TPV, list_run_dirs, read_config, summarize
from dtvg_engine.study import entry_of, grouping_of, recorded_constant

SETTINGS = ("model", "prompt_length")
"""Top-level study settings a stage-2 run must share to count (data_dir and device may differ)."""


@dataclass
class Study:
    """A study file and the finished runs that belong to it."""

    spec: dict[str, Any]
    runs: dict[tuple[str, str, int], Path]
    """(target, method, seed) → the newest completed stage-2 run with the study's settings."""
    sources: dict[str, Path]
    """Source task → the stage-1 run the stage-2 runs transferred from."""
    targets: dict[tuple[str, int], Path]
    """(target, seed) → the target's own stage-1 run for that seed (its vector T_t)."""


def _belongs(config: dict[str, Any], spec: dict[str, Any], entry: str, runs_dir: Path) -> bool:
    if config.get("stage") != "stage2" or config.get("sources") not in (spec["sources"], []):
        return False  # methods that use no sources (pt) record none
    wanted = {key: spec[key] for key in SETTINGS if key in spec} | spec.get("stage2", {})
    wanted |= method_registry.entry_settings(entry, grouping_of(spec))  # dtvg:prefix's rule
    seen = {**config, "steps": config.get("steps", 0) - config.get("target_stage1_steps", 0)}  # pt-fair
    if any(seen.get(key) != value for key, value in wanted.items()):
        return False
    own = config["stage1_runs"].get(config["target"])  # T_t must come from this seed's own shots
    return own is None or read_config(runs_dir / own).get("seed") == config["seed"]


def find_study(spec: dict[str, Any], runs_dir: Path) -> Study:
    """The study's completed stage-2 runs (newest wins) and the stage-1 runs behind them."""
    runs: dict[tuple[str, str, int], Path] = {}
    for run_dir in list_run_dirs(runs_dir):  # oldest first, so a newer run replaces an older one
        config = read_config(run_dir)
        key = (config.get("target"), entry_of(spec, config), config.get("seed"))
        if (
            key[0] in spec["targets"]
            and key[1] is not None
            and key[2] in spec["seeds"]
            and _belongs(config, spec, key[1], runs_dir)
            and summarize(run_dir).status == "completed"
        ):
            runs[key] = run_dir
    sources: dict[str, Path] = {}
    targets: dict[tuple[str, int], Path] = {}
    for (target, _, seed), run_dir in runs.items():
        for task, run_id in read_config(run_dir)["stage1_runs"].items():
            if task == target:
                targets[target, seed] = runs_dir / run_id
            else:
                sources[task] = runs_dir / run_id
    return Study(
        spec,
        runs,
        {task: sources[task] for task in spec["sources"] if task in sources},
        {key: targets[key] for key in sorted(targets, key=lambda k: (spec["targets"].index(k[0]), k[1]))},
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def constant_score(run_dir: Path) -> float:
    """The best test score a constant prediction gets on this run's test split (a stage-2 run's target,
    a stage-1 run's task): the floor a model that learned nothing but the label prior reaches (the
    majority class for accuracy). The value the run recorded with its split, else computed from the data.
    """
    from dtvg_engine.data import load_splits

    config = read_config(run_dir)
    recorded = recorded_constant(config)
    if recorded is not None:
        return recorded
    task = tasks.get_task(config.get("target") or config["task"])
    splits = load_splits(
        task.name,
        config["data_dir"],
        seed=config["seed"],
        k_shot=config["k_shot"],
        max_eval=config["max_eval"],
    )
    golds = [tasks.label_of(task, row) for row in splits.test]  # trec keeps its label in coarse_label
    return metrics.constant_score(task, golds)


def target_constants(study: Study) -> dict[str, float | None]:
    """Per target: the best constant score on its test splits, averaged over the seeds (every method of a
    seed is tested on the same split, so one run per seed stands for it); None without a finished run."""
    constants = {}
    for target in study.spec["targets"]:
        by_seed = {seed: run for (t, _, seed), run in study.runs.items() if t == target}
        values = [constant_score(run) for run in by_seed.values()]
        constants[target] = statistics.fmean(values) if values else None
    return constants


def results_section(results: dict[str, Any], study: Study, constants: dict[str, float | None]) -> list[str]:
    """Targets × methods, test score mean ± std over seeds, best per target in bold, and the average;
    last, the best constant prediction on the same test splits."""
    spec = study.spec
    cell = {(r["target"], r["method"]): r for r in results["rows"]}
    rows = []
    floors = [constants[target] for target in spec["targets"]]
    for target, floor in zip(spec["targets"], floors, strict=True):
        row = [f"{target} ({cell[target, spec['methods'][0]]['metric']})"]
        for method in spec["methods"]:
            r = cell[target, method]
            text = "—" if r["mean"] is None else f"{_pct(r['mean'])} ± {_pct(r['std'])}"
            if r["mean"] is not None and r["seeds"] < len(spec["seeds"]):
                text += f" ({r['seeds']} of {len(spec['seeds'])} seeds)"
            row.append(f"**{text}**" if r.get("best") else text)
        rows.append([*row, _pct(floor)])
    averages = ["average"]
    for means in [[cell[t, m]["mean"] for t in spec["targets"]] for m in spec["methods"]] + [floors]:
        averages.append("—" if None in means else _pct(sum(means) / len(means)))
    rows.append(averages)
    return _table(["target", *spec["methods"], "constant"], rows)


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
    ("dtvg", "T_t"),
)
"""The comparisons the papers' claims rest on. `T_t` is the target's own stage-1 run for the seed:
prompt tuning on the same shots, with no source."""


def paired_section(study: Study) -> list[str]:
    """Per target, method A − method B in test points seed by seed (same shots and split within a seed)."""

    tests = {key: pipeline.test_primary(run) for key, run in study.runs.items()}  # each events file once
    tests |= {
        (target, "T_t", seed): pipeline.test_primary(run) for (target, seed), run in study.targets.items()
    }

    rows = []
    methods = {*study.spec["methods"], "T_t"}
    for a, b in [(a, b) for a, b in PAIRS if a in methods and b in methods]:
        row, every = [f"{a} − {b}"], []
        for target in study.spec["targets"]:
            pairs = [
                (tests.get((target, a, seed)), tests.get((target, b, seed))) for seed in study.spec["seeds"]
            ]
            diffs = [100 * (x - y) for x, y in pairs if x is not None and y is not None]
            every += diffs
            seeds = ", ".join(f"{d:+.1f}" for d in diffs)
            row.append(f"{sum(diffs) / len(diffs):+.1f} ({seeds})" if diffs else "—")
        row.append(f"{sum(d > 0 for d in every)} / {every.count(0)} / {sum(d < 0 for d in every)}")
        rows.append(row)
    return _table(["A − B", *study.spec["targets"], "seeds A won / tied / lost"], rows)


def stage1_records(study: Study) -> list[tuple[Path, dict[str, Any]]]:
    """Every stage-1 run the study's transfers start from, with what `--json-out` writes of it: task,
    role ("source" or "target"), seed, test score and the constant floor of its test split (fractions)."""
    labelled = [(task, "source", run) for task, run in study.sources.items()]
    labelled += [(task, "target", run) for (task, _), run in study.targets.items()]
    records = []
    for task, role, run_dir in labelled:
        record = {"task": task, "role": role, "seed": read_config(run_dir)["seed"]}
        record |= {"test": pipeline.test_primary(run_dir), "constant": constant_score(run_dir)}
        records.append((run_dir, record))
    return records


def stage1_section(records: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """How well stage 1 learned each task: the vectors every transfer starts from.

    A target's stage-1 run is plain prompt tuning on its k shots for the stage-1 steps: its test score is
    what the target reaches with no source at all.
    """
    rows = []
    for run_dir, record in records:
        config, summary = read_config(run_dir), summarize(run_dir)
        shots = f"{config['k_shot']}-shot" if config.get("k_shot") else "full"
        role = "source" if record["role"] == "source" else f"target, seed {record['seed']}"
        rows.append(
            [
                record["task"],
                role,
                shots,
                f"`{run_dir.name}`",
                str(config["steps"]),
                _pct(summary.best_metric),
                _pct(record["test"]),
                _pct(record["constant"]),
            ]
        )
    header = ["task", "role", "data", "run", "steps", "best validation", "test", "constant"]
    return _table(header, rows)


def tested_metrics(run_dir: Path) -> dict[str, float]:
    """Every metric of a run's test evaluation (at its best validation checkpoint)."""
    test = read_state(run_dir / EVENTS).last_eval.get("test")
    return dict(test.metrics) if test is not None else {}


def metrics_section(study: Study) -> list[str]:
    """Each metric the targets report, mean ± std over seeds per method: the score is their mean, and
    a paper may report one of them (DTVG reports CB's accuracy)."""
    spec = study.spec
    rows = []
    for target in spec["targets"]:
        for name in tasks.get_task(target).metrics:
            row = [target, name]
            for method in spec["methods"]:
                runs = [run for (t, m, _), run in study.runs.items() if (t, m) == (target, method)]
                values = [v for v in (tested_metrics(run).get(name) for run in runs) if v is not None]
                spread = statistics.pstdev(values) if values else None
                row.append(f"{_pct(statistics.fmean(values))} ± {_pct(spread)}" if values else "—")
            rows.append(row)
    return _table(["target", "metric", *spec["methods"]], rows)


def _vectors(study: Study, runs_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, int], Any], Any]:
    """The sources' TPVs by task, the targets' by (task, seed), and the shared P_init they start from."""
    from safetensors.torch import load_file

    from dtvg_engine.tpv import load_tpv

    loaded = {
        run_dir: load_tpv(run_dir / TPV) for run_dir in [*study.sources.values(), *study.targets.values()]
    }
    (init_id,) = {meta["init_id"] for _, meta in loaded.values()}  # a study has one initialization
    p_init = load_file(runs_dir / INITS_DIR / f"{init_id}.safetensors")["prompt"]
    sources = {task: loaded[run_dir][0] for task, run_dir in study.sources.items()}
    targets = {key: loaded[run_dir][0] for key, run_dir in study.targets.items()}
    return sources, targets, p_init


def similarity_section(vectors: dict[str, Any]) -> list[str]:
    """The full similarity matrix of the stage-1 vectors, by eq. 2 and by cosine."""
    lines = []
    for metric, title in (("dot", "DTVG eq. 2 (dot of token sums / r²)"), ("cosine", "cosine")):
        names, matrix = grouping.similarity_matrix(vectors, metric)
        rows = [[name, *(f"{v:.3g}" for v in row)] for name, row in zip(names, matrix, strict=True)]
        lines += [f"**{title}**", "", *_table(["", *names], rows), ""]
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
    return _table(
        ["target", "seed", "eq. 2 ranking (tpv-top1 takes the first)", "SPoT cosine ranking (spot)"], rows
    )


def group_steps(run_dir: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(step, selected sources) of every `group` event of a run."""
    return [(e.step, tuple(e.selected)) for e in read_events(run_dir / EVENTS) if isinstance(e, Group)]


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
    """The Markdown report of a study and its results: the pipeline's rows, and beside them `constant`
    (target → best constant score) and `stage1` (one record per stage-1 run, see `stage1_records`)."""
    study = find_study(spec, runs_dir)
    results = pipeline.results_table(spec, list(study.runs.values()))
    constants = target_constants(study)
    stage1 = stage1_records(study)
    results |= {"constant": constants, "stage1": [record for _, record in stage1]}
    lines = [
        f"# Study `{spec['name']}`: {len(study.runs)} finished stage-2 runs",
        "",
        "## Test score (mean ± std over seeds, best per target in bold; constant: best constant prediction)",
        "",
        *results_section(results, study, constants),
        "",
        "## Every metric (test, mean ± std over seeds; the score above is the mean of the task's metrics)",
        "",
        *metrics_section(study),
        "",
        "## Stage 1",
        "",
        *stage1_section(stage1),
        "",
    ]
    if study.sources and study.targets:
        sources, targets, p_init = _vectors(study, runs_dir)
        first_seed = {
            target: vector for (target, seed), vector in targets.items() if seed == spec["seeds"][0]
        }
        lines += [
            f"## Similarity of the stage-1 task prompt vectors (targets: seed {spec['seeds'][0]})",
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
        *paired_section(study),
        "",
    ]
    grouped = [m for m in spec["methods"] if method_registry.parse(m)[0].group_rule == "setting"]
    for method in grouped:  # dtvg and fixed-group, with each grouping rule the study lists
        if any(key[1] == method for key in study.runs):
            lines += [f"## Source groups of `{method}`", "", *groups_section(study, method), ""]
    return "\n".join(lines), results
