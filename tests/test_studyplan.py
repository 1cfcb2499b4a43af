"""dtvg_engine.studies.studyplan: a study's slots computed forward, and studies made before runs recorded
theirs.

`tests/fixtures/study-v1/` (a pt-fair and both dtvg groupings, with pt at its T_t's settings) and
`tests/fixtures/study/` were made by the pipeline before runs recorded their slot;
`tests/fixtures/reports-7d0771e/` holds what `dtvg runs report` of that version printed for them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dtvg_engine.runs.runfolder import read_config
from dtvg_engine.studies import study, studyplan, studyprocess, studyprogress
from dtvg_engine.studies.report import report
from dtvg_engine.studies.studyfile import StudySpec, load_experiment

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_STUDIES = {
    "plan-v1": FIXTURES / "study-v1" / "plan-v1.toml",
    "tiny-study": FIXTURES / "study" / "tiny-study.toml",
}
"""Studies made by the pipeline before runs recorded their slot (their runs are next to the file)."""


def old_study(name: str) -> tuple[StudySpec, Path]:
    path = OLD_STUDIES[name]
    return load_experiment(path), path.parent / "runs"


@pytest.mark.parametrize("name", sorted(OLD_STUDIES))
def test_an_old_study_reports_as_it_did(name: str) -> None:
    """The report (Markdown and `--json-out`) of a study made before runs recorded their slot is what
    that version printed: every score, floor, stage-1 row, similarity, pick and group."""
    spec, runs = old_study(name)
    text, table = report(spec, runs)
    assert text + "\n" == (FIXTURES / "reports-7d0771e" / f"{name}.md").read_text()
    old = json.loads((FIXTURES / "reports-7d0771e" / f"{name}.json").read_text())
    document = json.loads(json.dumps(table.document()))
    assert [{key: row[key] for key in old["rows"][0]} for row in document["rows"]] == old["rows"]
    assert {k: v for k, v in document.items() if k != "rows"} == {k: v for k, v in old.items() if k != "rows"}


def test_an_old_study_is_complete_and_its_pt_is_its_own_stage1_run() -> None:
    """Every slot of the old study is done; its pt runs (trained a second time by that version, the
    same prompt bit for bit) give way to the target's own stage-1 run, which the plan gives both."""
    spec, runs_dir = old_study("plan-v1")
    filled = studyprogress.fill(spec, study.Runs.read(runs_dir))
    assert studyprogress.counts(filled)["done"] == len(filled) == 2 + 2 + 4 * 2
    by_key = {(f.stage, f.task, f.method, f.seed): f for f in filled}
    for seed in (0, 1):
        own = by_key["stage1", "rte", "pt", seed]
        assert own.run_id.endswith(f"rte-s{seed}")
        assert by_key["stage2", "rte", "pt", seed].run_id == own.run_id
        fair = read_config(runs_dir / by_key["stage2", "rte", "pt-fair", seed].run_id)
        assert fair["method"] == "pt-fair" and fair["steps"] == 8  # T_t's 4 steps and its own 4
    prefix = read_config(runs_dir / by_key["stage2", "rte", "dtvg:prefix", 1].run_id)
    assert prefix["grouping"] == "prefix"


def test_the_plan_of_a_study() -> None:
    """Sources once, each target's T_t per seed, then target × entry × seed; `pt` at T_t's settings is
    T_t's run, and an entry keeps its rule."""
    spec, _ = old_study("plan-v1")
    slots = studyplan.plan(spec, banked={})
    assert [slot.key for slot in slots] == [
        ("stage1", "mnli", "pt", None),
        ("stage1", "sst2", "pt", None),
        ("stage1", "rte", "pt", 0),
        ("stage1", "rte", "pt", 1),
        *[("stage2", "rte", entry, seed) for entry in spec.methods for seed in (0, 1)],
    ]
    twins = {slot.key: slot.same_as for slot in slots if slot.same_as}
    assert twins == {("stage2", "rte", "pt", seed): ("stage1", "rte", "pt", seed) for seed in (0, 1)}
    prefix = [slot for slot in slots if slot.entry == "dtvg:prefix"][-1]
    assert prefix.fixed(spec.grouping) == {"method": "dtvg", "grouping": "prefix"}
    assert prefix.label == "rte-dtvg-prefix-s1" and prefix.settings["seed"] == 1
    assert prefix.record("plan-v1") == {
        "study": "plan-v1",
        "stage": "stage2",
        "task": "rte",
        "entry": "dtvg:prefix",
        "seed": 1,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"stage2": {"steps": 5, "k_shot": 8, "eval_every": 2, "max_eval": 16}},  # more stage-2 steps
        {"stage2": {"steps": 4, "k_shot": 8, "eval_every": 2, "max_eval": 16, "lr": 0.1}},
        {"stage1": {"steps": 4, "k_shot": 8, "eval_every": 2, "max_eval": 32}},
    ],
)
def test_pt_is_its_own_run_where_any_setting_differs(change: dict) -> None:
    spec = dataclasses.replace(old_study("plan-v1")[0], **change)
    assert not any(slot.same_as for slot in studyplan.plan(spec, banked={}))


def test_pt_alone_has_no_target_run_to_share() -> None:
    spec = dataclasses.replace(old_study("plan-v1")[0], methods=("pt",))
    assert [slot.key for slot in studyplan.plan(spec, banked={}) if slot.task == "rte"] == [
        ("stage2", "rte", "pt", 0),
        ("stage2", "rte", "pt", 1),
    ]


def test_a_run_is_joined_by_the_slot_it_records(tmp_path: Path) -> None:
    """A run records its slot: that slot it fills (a legacy match would have put it elsewhere), if it
    has the settings the plan gives that slot; a record of another study is matched as an old run."""
    spec, fixture = old_study("plan-v1")
    runs_dir = tmp_path / "runs"
    shutil.copytree(fixture, runs_dir)
    (greedy,) = runs_dir.glob("*-stage2-rte-dtvg-s0")
    config = read_config(greedy)
    assert study.slot_of(config, spec) == ("stage2", "rte", "dtvg", 0)  # the legacy matcher
    recorded = {"study": "plan-v1", "stage": "stage2", "task": "rte", "entry": "dtvg:prefix", "seed": 0}
    assert study.slot_of({**config, "slot": recorded}, spec) == ("stage2", "rte", "dtvg:prefix", 0)
    elsewhere = {**recorded, "study": "another"}
    assert study.slot_of({**config, "slot": elsewhere}, spec) == ("stage2", "rte", "dtvg", 0)
    for damaged in ({**recorded, "task": ["rte"]}, {**recorded, "seed": "0"}):  # data, never a crash
        assert study.slot_of({**config, "slot": damaged}, spec) == ("stage2", "rte", "dtvg", 0)

    (greedy / "config.json").write_text(json.dumps({**config, "slot": recorded}))
    runs = study.Runs.read(runs_dir)
    filled = {(f.stage, f.task, f.method, f.seed): f for f in studyprogress.fill(spec, runs)}
    assert filled["stage2", "rte", "dtvg", 0].state == "queued"  # its record moved it...
    assert filled["stage2", "rte", "dtvg:prefix", 0].run_id != greedy.name  # ...where its grouping is wrong


def test_an_edited_study_no_longer_counts_the_runs_of_its_old_settings() -> None:
    """The runs must have the settings the plan gives their slot: after `[stage2] steps` changed, the
    stage-2 runs (but pt, which is T_t's) are runs of another study."""
    spec, runs_dir = old_study("plan-v1")
    edited = dataclasses.replace(spec, stage2={**spec.stage2, "steps": 6})
    filled = studyprogress.fill(edited, study.Runs.read(runs_dir))
    states = {(f.stage, f.method): f.state for f in filled}
    assert states["stage1", "pt"] == "done" and states["stage2", "dtvg"] == "queued"
    assert states["stage2", "pt"] == "queued" and states["stage2", "pt-fair"] == "queued"


def test_a_record_of_a_study_reads_back_as_its_spec(tmp_path: Path) -> None:
    spec, _ = old_study("plan-v1")
    spec = spec.with_data_dir("/data")
    studyprocess.record_study(tmp_path, spec, OLD_STUDIES["plan-v1"])
    assert studyprocess.read_record(studyprocess.record_path(tmp_path, "plan-v1"))[0] == spec


def portable(config: dict) -> dict:
    """A config with the data files its split names made relative to its data_dir, which is wherever the
    data lay on the machine that made the run (the fixture was made at /work, CI checks out elsewhere)."""
    split = config.get("split")
    if not split:
        return config
    root = Path(config["data_dir"])
    files = {name: str(Path(file).relative_to(root)) for name, file in split["files"].items()}
    return config | {"split": split | {"files": files}}


@pytest.mark.slow  # ten tiny runs: minutes on two busy cores
def test_the_plan_trains_what_the_old_pipeline_trained(runs_dir: Path, data_dir: Path) -> None:
    """The same study run again by the plan: every run the old pipeline trained (but the pt runs, now
    their T_t's) has the same config (but its ids, time, slot, data path and the run ids it names) and
    the same prompt and evaluations, bit for bit."""
    args = ["run", "pipeline", str(OLD_STUDIES["plan-v1"]), "--runs-dir", str(runs_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "dtvg_engine.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, old_runs = old_study("plan-v1")
    new = {path.name.split("-", 2)[2]: path for path in runs_dir.glob("2*")}
    old = {path.name.split("-", 2)[2]: path for path in old_runs.glob("2*")}
    assert set(new) == set(old) - {"stage2-rte-pt-s0", "stage2-rte-pt-s1"}
    # data_dir: where the tests find it; init_sha256: recorded by every run made since the fixture was
    differ = {"run_id", "created", "slot", "stage1_runs", "data_dir", "init_sha256"}
    for label, path in new.items():
        made, was = portable(read_config(path)), portable(read_config(old[label]))
        assert {key for key in made.keys() | was.keys() if made.get(key) != was.get(key)} <= differ, label
        assert load_file(path / "prompt.safetensors")["prompt"].equal(
            load_file(old[label] / "prompt.safetensors")["prompt"]
        ), label
        evals = [
            [line for line in (p / "events.jsonl").read_text().splitlines() if '"eval"' in line]
            for p in (path, old[label])
        ]
        untimed = [[json.loads(line) | {"time": 0} for line in lines] for lines in evals]
        assert untimed[0] == untimed[1], label
