"""Task files: the built-in tasks are one, a user's file is read by the same code, every mistake in one
is refused before a run exists, and a user task runs through stage 1 and stage 2 on real data."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_bad_input, dtvg

from dtvg_engine.errors import UserError
from dtvg_engine.train import tasks
from dtvg_engine.train.data import load_splits

SNAPSHOT = Path(__file__).parent / "fixtures" / "builtin_tasks.json"
"""Every field of every built-in task as the registry in Python code defined them, before task files."""

TINY = ["--model", "tiny-llama", "--prompt-length", "4", "--k-shot", "16", "--max-eval", "16"]
TINY += ["--steps", "2", "--eval-every", "1", "--device", "cpu"]

MY_RTE = """
[tasks.my_rte]
data = "my_rte"
kind = "classification"
template = "{sentence1} Question: {sentence2} True or false? Answer:"
label_words = [" true", " false"]
labels = { entailment = 0, not_entailment = 1 }
size = "small"
"""
"""A user's task: RTE as a CSV file with string labels, in a folder next to the task file."""


@pytest.fixture(autouse=True)
def no_user_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the built-in tasks alone (the registry is per process)."""
    monkeypatch.setattr(tasks, "_USER_TASKS", {})


def write_rte_csv(data_dir: Path, folder: Path, rows: int = 120) -> None:
    """The first `rows` rows of each real RTE split as CSV, labels spelled as strings."""
    folder.mkdir(parents=True)
    names = ("entailment", "not_entailment")
    for split in ("train", "validation"):
        with (data_dir / "rte" / f"{split}.jsonl").open(encoding="utf-8") as lines:
            source = [json.loads(line) for _, line in zip(range(rows), lines, strict=False)]
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, ["sentence1", "sentence2", "label"])
            writer.writeheader()
            for row in source:
                writer.writerow(
                    {**{k: row[k] for k in ("sentence1", "sentence2")}, "label": names[row["label"]]}
                )


def task_file(folder: Path, text: str = MY_RTE) -> Path:
    path = folder / "my_tasks.toml"
    path.write_text(text)
    return path


@pytest.fixture
def my_rte(tmp_path: Path, data_dir: Path) -> Path:
    """A task file defining my_rte over a CSV copy of RTE."""
    write_rte_csv(data_dir, tmp_path / "my_rte")
    return task_file(tmp_path)


# --- the format ------------------------------------------------------------------------------------


def test_builtin_tasks_are_exactly_those_of_the_registry_before_task_files() -> None:
    """Same names in the same order, and every field (templates, label words, metrics, split rule, label
    mapping, generation fields) as the Python registry had them."""
    snapshot = json.loads(SNAPSHOT.read_text())
    assert list(tasks.TASKS) == list(snapshot)
    for name, fields in snapshot.items():
        task = tasks.TASKS[name]
        got = json.loads(json.dumps({key: getattr(task, key) for key in fields}))
        assert got == fields, name
        assert task.origin == tasks.BUILTIN and task.data is None


def test_a_definition_reads_back_as_the_same_task(tmp_path: Path) -> None:
    """What `dtvg tasks show` prints and a run records is a task table that gives the same task."""
    for name, task in tasks.TASKS.items():
        again = tasks.task_from_table(name, tasks.definition(task), str(tasks.BUILTIN_FILE), None)
        assert again == task and dataclasses.astuple(again) == dataclasses.astuple(task)


def test_a_user_task_file_gives_a_task_like_the_built_ins(my_rte: Path, tmp_path: Path) -> None:
    found = tasks.load_task_file(my_rte)
    task = found["my_rte"]
    rte = tasks.TASKS["rte"]
    assert task.template == rte.template and task.label_words == rte.label_words
    assert task.metrics == ("accuracy",) and task.size == "small" and task.kind == "classification"
    assert task.data == str(tmp_path / "my_rte") and task.origin == str(my_rte)
    assert task.string_labels == {"entailment": 0, "not_entailment": 1}
    assert "my_rte" not in tasks.all_tasks()  # reading a file registers nothing
    tasks.use(found)
    assert tasks.get_task("my_rte") is task and "my_rte" in tasks.trainable_tasks()


def test_a_user_task_reads_its_own_folder_in_any_format(my_rte: Path, data_dir: Path) -> None:
    """CSV with string labels, from the folder `data` names: the rows and split rule of RTE itself."""
    tasks.use_file(my_rte)
    mine = load_splits("my_rte", "/nonexistent-data-dir", seed=0)
    assert mine.split_info["rule"].startswith("small")
    assert mine.split_info["files"]["train"].endswith("my_rte/train.csv")
    assert {row["label"] for row in mine.train} == {0, 1}
    rte = load_splits("rte", data_dir, seed=0)
    assert [row["sentence1"] for row in mine.train] == [row["sentence1"] for row in rte.train[:120]]


def test_a_hub_dataset_is_named_not_resolved(tmp_path: Path) -> None:
    text = MY_RTE.replace('data = "my_rte"', 'data = "hf://someone/reviews"')
    task = tasks.load_task_file(task_file(tmp_path, text))["my_rte"]
    assert task.data == "hf://someone/reviews" and task.path == "reviews"
    bad = tmp_path / "bad.toml"
    bad.write_text(MY_RTE.replace('data = "my_rte"', 'data = "hf://reviews"'))
    with pytest.raises(UserError, match="task 'my_rte': data: a Hub dataset is written hf://owner/name"):
        tasks.load_task_file(bad)


def test_the_task_file_comes_from_the_environment(my_rte: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tasks.TASKS_ENV, str(my_rte))
    assert set(tasks.use_file(None)) == {"my_rte"}
    assert tasks.get_task("my_rte").origin == str(my_rte)


def test_a_built_in_task_is_replaced_only_when_the_file_says_so(tmp_path: Path, data_dir: Path) -> None:
    write_rte_csv(data_dir, tmp_path / "my_rte")
    text = MY_RTE.replace("[tasks.my_rte]", "[tasks.rte]\nreplaces = true")
    tasks.use_file(task_file(tmp_path, text))
    assert tasks.get_task("rte").data == str(tmp_path / "my_rte")
    assert list(tasks.all_tasks()).count("rte") == 1
    assert tasks.recorded(["rte"])[tasks.RECORD_KEY]["rte"]["replaces"] is True


def test_a_run_records_its_user_tasks_and_reads_them_back(my_rte: Path, tmp_path: Path) -> None:
    """The record holds the whole definition with its folder absolute; a built-in task adds nothing."""
    from dtvg_engine.config import stage1_config

    tasks.use_file(my_rte)
    config = stage1_config("my_rte", model="tiny-llama", prompt_length=4)
    assert config[tasks.RECORD_KEY]["my_rte"]["data"] == str(tmp_path / "my_rte")
    assert tasks.RECORD_KEY not in stage1_config("rte", model="tiny-llama", prompt_length=4)
    mine = tasks.get_task("my_rte")
    tasks._USER_TASKS.clear()
    tasks.adopt(json.loads(json.dumps(config)), "run/config.json")
    assert tasks.get_task("my_rte") == mine


def test_tasks_list_and_show(my_rte: Path) -> None:
    listed = json.loads(dtvg("tasks", "list", "--json", "--tasks", my_rte).stdout)
    by_name = {row["name"]: row for row in listed}
    assert set(tasks.TASKS) < set(by_name)
    assert by_name["my_rte"]["origin"] == str(my_rte) and by_name["cola"]["scored_by"] == ["mcc"]
    assert by_name["stsb"]["kind"] == "regression" and by_name["web_nlg"]["target"] == "target"
    shown = dtvg("tasks", "show", "cb")
    assert shown.returncode == 0
    import tomllib

    table = tomllib.loads(shown.stdout)["tasks"]["cb"]
    assert tasks.task_from_table("cb", table, str(tasks.BUILTIN_FILE), None) == tasks.TASKS["cb"]
    assert "unknown task 'my_rte'" in assert_bad_input(dtvg("tasks", "show", "my_rte"))


# --- bad input -------------------------------------------------------------------------------------

BAD_FILES = {
    "not TOML": ("[tasks.x\ndata = 1", "not valid TOML"),
    "unknown key": (MY_RTE + 'colour = "blue"\n', "task 'my_rte': unknown key 'colour'"),
    "unknown top-level key": ("title = 'mine'\n" + MY_RTE, "unknown key 'title'"),
    "label id outside the words": (
        MY_RTE.replace("not_entailment = 1", "not_entailment = 2"),
        "task 'my_rte': labels: not_entailment = 2 is not a label id",
    ),
    "shadows a built-in": (MY_RTE.replace("[tasks.my_rte]", "[tasks.rte]"), "'rte' is a built-in task"),
    "replaces nothing": (MY_RTE + "replaces = true\n", "no built-in task 'my_rte' to replace"),
    "missing data folder": (MY_RTE.replace('"my_rte"', '"nowhere"', 1), "task 'my_rte': data: folder"),
    "no kind": (MY_RTE.replace('kind = "classification"\n', ""), "task 'my_rte': missing key 'kind'"),
    "template with code": (
        MY_RTE.replace("{sentence1}", "{sentence1.__class__}"),
        "task 'my_rte': template: {sentence1.__class__} is not a plain field name",
    ),
    "unknown metric": (MY_RTE + 'metrics = ["bleu"]\n', "task 'my_rte': metrics must be"),
    "regression range": (
        MY_RTE.replace('"classification"', '"regression"').replace("labels =", "range = [0, 9]\n#"),
        "task 'my_rte': range must be [0, 1]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_task_file_is_one_line_exit_2_and_no_run(case: str, tmp_path: Path, data_dir: Path) -> None:
    text, words = BAD_FILES[case]
    write_rte_csv(data_dir, tmp_path / "my_rte", rows=40)
    path = task_file(tmp_path, text)
    runs = tmp_path / "runs"
    line = assert_bad_input(dtvg("run", "stage1", "my_rte", *TINY, "--tasks", path, "--runs-dir", runs))
    assert str(path) in line and words in line, line
    assert not runs.exists() or not any(runs.iterdir())


def named_file(tmp_path: Path, kind: str) -> Path:
    """What a user may name where a TOML file belongs: a FIFO, a device, a folder, a 5 MiB file."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo.toml")
        return tmp_path / "fifo.toml"
    if kind == "device":
        return Path("/dev/zero")
    if kind == "folder":
        (tmp_path / "folder.toml").mkdir()
        return tmp_path / "folder.toml"
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (5 << 20) + "\n")
    return huge


NOT_A_TOML_FILE = {
    "fifo": "is a FIFO, not a regular file; name a TOML file",
    "device": "is a device, not a regular file; name a TOML file",
    "folder": "is a folder, not a regular file; name a TOML file",
    "huge": f"is larger than {4 << 20} bytes; name a TOML file",
}


@pytest.mark.parametrize("kind", sorted(NOT_A_TOML_FILE))
def test_a_task_or_study_file_that_is_no_regular_file_is_one_line_not_a_hang(
    kind: str, tmp_path: Path
) -> None:
    path = named_file(tmp_path, kind)
    runs = tmp_path / "runs"
    line = assert_bad_input(dtvg("tasks", "list", "--tasks", path, timeout=60))
    assert line == f"error: task file {path} {NOT_A_TOML_FILE[kind]}"
    line = assert_bad_input(dtvg("run", "pipeline", path, "--runs-dir", runs, timeout=60))
    assert line == f"error: experiment file {path} {NOT_A_TOML_FILE[kind]}"
    assert not runs.exists() or not any(runs.iterdir())


def test_a_task_file_may_be_a_link(my_rte: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked.toml"
    link.symlink_to(my_rte)
    listed = dtvg("tasks", "list", "--tasks", link, "--json")
    assert listed.returncode == 0, listed.stderr
    assert "my_rte" in listed.stdout


def test_a_template_field_missing_in_the_data_names_file_task_and_field(my_rte: Path, tmp_path: Path) -> None:
    my_rte.write_text(MY_RTE.replace("{sentence2}", "{hypothesis}"))
    line = assert_bad_input(
        dtvg("run", "stage1", "my_rte", *TINY, "--tasks", my_rte, "--runs-dir", tmp_path / "r")
    )
    assert f"{my_rte}: task 'my_rte':" in line and "no field 'hypothesis'" in line
    assert not any((tmp_path / "r").iterdir())


def test_a_label_outside_the_words_in_the_data_is_refused(my_rte: Path, tmp_path: Path) -> None:
    my_rte.write_text(MY_RTE.replace("labels = { entailment = 0, not_entailment = 1 }", ""))
    line = assert_bad_input(
        dtvg("run", "stage1", "my_rte", *TINY, "--tasks", my_rte, "--runs-dir", tmp_path / "r")
    )
    assert f"{my_rte}: task 'my_rte':" in line and "is not a valid label; expected an integer" in line


def test_label_words_with_one_first_token_are_refused_before_a_run(my_rte: Path, tmp_path: Path) -> None:
    """SmolLM2 splits " 3" into " " + "3", as " 4": the run could never tell them apart."""
    my_rte.write_text(MY_RTE.replace('[" true", " false"]', '[" 3", " 4"]'))
    runs = tmp_path / "r"
    line = assert_bad_input(dtvg("run", "stage1", "my_rte", *TINY, "--tasks", my_rte, "--runs-dir", runs))
    assert f"{my_rte}: task 'my_rte': label_words ' 3' and ' 4' start with the same token" in line
    assert not any(runs.iterdir())


# --- end to end ------------------------------------------------------------------------------------


def test_a_user_task_runs_as_source_and_target_through_both_stages(
    my_rte: Path, tmp_path: Path, data_dir: Path
) -> None:
    """Stage 1 of my_rte and cb; stage 2 with my_rte as the target and as a source. The workers read the
    task from the runs' config.json alone, and a run stays reportable once the task file is gone."""
    runs = tmp_path / "runs"
    common = [*TINY, "--runs-dir", runs, "--data-dir", data_dir]
    env = {**os.environ, tasks.TASKS_ENV: str(my_rte)}  # the default task file, as a user sets it
    result = subprocess.run(
        [sys.executable, "-m", "dtvg_engine.cli", "run", "stage1", "my_rte", "cb", *map(str, common)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for target, source in (("my_rte", "cb"), ("cb", "my_rte")):
        command = ["run", "stage2", "--target", target, "--sources", source, "--method", "dtvg", *common]
        result = dtvg(*command, "--tasks", my_rte)
        assert result.returncode == 0, result.stdout + result.stderr
    listed = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert sorted(row["status"] for row in listed) == ["completed"] * 4
    stage2 = next(runs.glob("*my_rte-dtvg*"))
    config = json.loads((stage2 / "config.json").read_text())
    assert config[tasks.RECORD_KEY]["my_rte"]["labels"] == {"entailment": 0, "not_entailment": 1}
    assert set(config[tasks.RECORD_KEY]) == {"my_rte"}  # cb is built in: nothing to record
    similar = json.loads(dtvg("tpv", "sim", "my_rte", "cb", "--json", "--runs-dir", runs).stdout)
    assert similar["tasks"] == ["my_rte", "cb"] and len(similar["matrix"]) == 2


def test_a_queued_user_task_run_starts_without_its_task_file(my_rte: Path, tmp_path: Path) -> None:
    """A run folder is resumable on its own: the worker takes the task from config.json."""
    from dtvg_engine.config import stage1_config
    from dtvg_engine.runs.runfolder import create_run

    tasks.use_file(my_rte)
    config = stage1_config("my_rte", model="tiny-llama", prompt_length=4, k_shot=16, max_eval=16, steps=2)
    run_dir = create_run(tmp_path / "runs", "stage1", "my_rte", {**config, "device": "cpu"})
    my_rte.unlink()
    result = dtvg("run", "resume", run_dir.name, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(dtvg("runs", "show", run_dir.name, "--json", "--runs-dir", tmp_path / "runs").stdout)
    assert shown["status"] == "completed"


# --- studies ---------------------------------------------------------------------------------------

STUDY = """
name = "mine"
model = "tiny-llama"
prompt_length = 4
device = "cpu"
sources = ["my_rte"]
targets = ["cb"]
methods = ["dtvg"]
bank = false
[stage1]
steps = 2
max_eval = 16
eval_every = 1
k_shot = 16
[stage2]
steps = 2
max_eval = 16
eval_every = 1
k_shot = 16
"""


def test_a_study_names_its_task_file_or_holds_its_tasks(my_rte: Path, tmp_path: Path) -> None:
    from dtvg_engine.studies.studyfile import load_experiment

    study = tmp_path / "study.toml"
    study.write_text(f'tasks = "{my_rte.name}"\n' + STUDY)
    assert load_experiment(study).sources == ("my_rte",)
    assert tasks.get_task("my_rte").origin == str(my_rte)
    tasks._USER_TASKS.clear()
    study.write_text(STUDY + MY_RTE)  # the [tasks.my_rte] table inside the study file itself
    load_experiment(study)
    assert tasks.get_task("my_rte").origin == str(study)
    assert tasks.get_task("my_rte").data == str(tmp_path / "my_rte")


def test_a_study_without_tasks_takes_those_of_the_environment(
    my_rte: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtvg_engine.studies.studyfile import load_experiment

    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    with pytest.raises(UserError, match="unknown task 'my_rte'"):
        load_experiment(study)
    monkeypatch.setenv(tasks.TASKS_ENV, str(my_rte))
    assert load_experiment(study).sources == ("my_rte",)


def test_a_bad_task_in_a_study_is_one_line_naming_it(my_rte: Path, tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY + MY_RTE.replace('"small"', '"huge"'))
    line = assert_bad_input(dtvg("run", "pipeline", study, "--runs-dir", tmp_path / "runs"))
    assert f"{study}: task 'my_rte': size must be one of large, small" in line


def test_a_pipeline_transfers_from_a_user_task(my_rte: Path, tmp_path: Path, data_dir: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(f'tasks = "{my_rte.name}"\n' + STUDY)
    runs = tmp_path / "runs"
    result = dtvg("run", "pipeline", study, "--runs-dir", runs, "--data-dir", data_dir, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    listed = json.loads(dtvg("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert sorted((row["stage"], row["status"]) for row in listed) == [
        ("stage1", "completed"), ("stage1", "completed"), ("stage2", "completed")
    ]  # fmt: skip
    results = json.loads((runs / "mine-results.json").read_text())
    assert "cb" in json.dumps(results)


@pytest.mark.parametrize(
    "command",
    [
        ["run", "stage1", "rte", "--runs-dir", "{tmp}/runs"],
        ["run", "stage2", "--target", "rte", "--sources", "mnli", "--runs-dir", "{tmp}/runs"],
        ["run", "pipeline", "{tmp}/study.toml", "--runs-dir", "{tmp}/runs"],
        ["tasks", "list"],
        ["tasks", "show", "rte"],
    ],
)
def test_every_command_taking_a_task_file_refuses_a_missing_one(command: list[str], tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace("my_rte", "mnli"))
    missing = tmp_path / "nowhere.toml"
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    line = assert_bad_input(dtvg(*args, "--tasks", missing))
    assert f"task file {missing} does not exist" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
