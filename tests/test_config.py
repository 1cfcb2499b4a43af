"""`dtvg_engine.config`'s value rules: the one check the CLI, the TUI form and the pipeline share."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from dtvg_engine import config
from dtvg_engine.errors import UserError
from dtvg_engine.runs.events import Log, read_events
from dtvg_engine.runs.runfolder import EVENTS, create_run, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.worker import run_worker


def test_every_setting_has_a_rule() -> None:
    """A new setting without a rule would go unchecked everywhere; the method has its own registry check."""
    keys = set(config.TRAINING_DEFAULTS) | set(config.STAGE2_DEFAULTS)
    assert keys - set(config.SETTING_RULES) == {"method"}


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (config.Rule(int, low=1), [1, 7], [0, 1.0, 8.5, True, "2", None]),
        (config.Rule(float, low=0, above=True), [0.3, 2], [0, -1.0, math.nan, math.inf, False, "0.3"]),
        (config.Rule(float, low=0, high=1), [0, 0.5, 1], [1.5, -0.1, math.nan]),
        (config.Rule(int, low=1, optional=True), [None, 3], [0, "x"]),
        (config.Rule(str, choices=("a", "b")), ["a"], ["c", 1, None]),
    ],
)
def test_rule_accepts(rule: config.Rule, good: list, bad: list) -> None:
    assert all(rule.accepts(v) for v in good)
    assert not any(rule.accepts(v) for v in bad)


def test_check_settings_names_the_setting_as_its_caller_spells_it() -> None:
    with pytest.raises(
        UserError, match=r"^--source-scale-lr must be a finite number of at least 0 \(got -5\)$"
    ):
        config.check_settings({"source_scale_lr": -5})
    with pytest.raises(UserError, match=r"^study.toml: \[stage2\] steps must be an integer of at least 1"):
        config.check_settings({"steps": 2.5}, label=lambda key: f"study.toml: [stage2] {key}")


def test_swept_defaults_apply_to_their_model_only(tmp_path) -> None:
    """smollm2-135m runs take the swept lr and prompt length (docs/sweep.md), every other backbone the
    papers' values, and a setting given explicitly wins over both, in stage 1 and stage 2."""
    swept = config.MODEL_DEFAULTS["smollm2-135m"]
    assert set(swept) == {"lr", "prompt_length"}
    assert swept != {k: config.TRAINING_DEFAULTS[k] for k in swept}, "the sweep moved the defaults"
    own = config.stage1_config("rte")
    assert own["model"] == "smollm2-135m" and {k: own[k] for k in swept} == swept
    tiny = config.stage1_config("rte", model="tiny-llama")
    assert {k: tiny[k] for k in swept} == {k: config.TRAINING_DEFAULTS[k] for k in swept}
    assert config.stage1_config("rte", lr=0.05, prompt_length=12)["lr"] == 0.05
    pt = config.stage2_config("rte", [], "pt", tmp_path)
    assert {k: pt[k] for k in swept} == swept
    assert config.stage2_config("rte", [], "pt", tmp_path, model="tiny-llama")["lr"] == 0.3


# ----- one home per setting: the CLI, the New-run form and study files derive from the fields -----------

COMMAND_OPTIONS = {
    "--runs-dir",
    "--detach",
    "--jobs",
    "--executor",
    "--help",
    "--sources",
    "--tpv",
    "--target",
    "--tasks",
}
"""Options of `dtvg run ...` that are no run setting (and `--slurm-*`)."""


def _run_command(name: str):  # noqa: ANN202
    import typer

    from dtvg_engine.cli import app

    return typer.main.get_command(app).commands["run"].commands[name]  # type: ignore[attr-defined]


def _setting_options(name: str) -> dict[str, object]:
    """A `dtvg run` command's options that are settings, by setting key; asserts the rest are its own."""
    flags = {config.cli_flag(key): key for key in config.SETTINGS_BY_KEY}
    found = {}
    for param in _run_command(name).params:
        flag = max(param.opts, key=len)
        if flag in flags:
            found[flags[flag]] = param
        elif param.param_type_name == "option":
            assert flag in COMMAND_OPTIONS or flag.startswith("--slurm-"), f"dtvg run {name} {flag}"
    return found


def test_every_run_option_that_is_a_setting_comes_from_its_field() -> None:
    """Each setting's flag, default and help are its field's: the options spell none of their own."""
    stage1, stage2 = _setting_options("stage1"), _setting_options("stage2")
    assert set(stage1) == set(config.TRAINING_DEFAULTS)
    assert set(stage2) == set(config.SETTINGS_BY_KEY) - {"init_prompt"}  # stage 2 starts from T_t
    for key, param in {**stage1, **stage2}.items():
        field = config.SETTINGS_BY_KEY[key]
        swept = key in config.SWEPT_KEYS
        assert param.default == (None if swept else field.default), key
        assert param.help.startswith(field.metadata["help"]), key
    assert _setting_options("stage2")["lambda"].opts == ["--lambda"]
    assert set(_setting_options("pipeline")) == {"data_dir"}


def test_study_file_keys_are_settings_or_the_study_shape() -> None:
    from dtvg_engine.studies import studyfile

    settings = set(config.SETTINGS_BY_KEY)
    assert studyfile.TOP_KEYS - set(studyfile.STUDY_KEYS) == set(studyfile.SHARED_KEYS) <= settings
    assert not set(studyfile.STUDY_KEYS) & settings
    for table, keys in studyfile.STAGE_TABLES.items():
        assert keys <= settings and not keys & set(studyfile.SHARED_KEYS), table


def test_the_defaults_are_the_fields_defaults() -> None:
    """`TRAINING_DEFAULTS`, `STAGE2_DEFAULTS` and `SETTING_RULES` are views of the two settings classes."""
    assert config.TrainingSettings() == config.TrainingSettings(**config.TRAINING_DEFAULTS)
    stage2 = config.Stage2Settings()
    assert {config.key_of(f): getattr(stage2, f.name) for f in config.SETTINGS} == {
        **config.TRAINING_DEFAULTS,
        **config.STAGE2_DEFAULTS,
    }
    assert config.SETTING_RULES["lambda"] == config.SETTINGS_BY_KEY["lambda"].metadata["rule"]
    assert all(f.metadata["help"] for f in config.SETTINGS)


# ----- reading a run's config.json into the typed settings -----

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED = sorted(FIXTURES.rglob("config.json"))
"""The config.json of every run kept as a fixture, made by older versions (some before `precision`,
`eval_order`, `max_target_tokens` or `init_sha256` existed)."""


def test_every_recorded_run_config_reads_into_its_typed_settings() -> None:
    """What a file holds is read as is; a setting it lacks takes what runs of its version ran with."""
    assert len(RECORDED) > 30
    missing = set()
    for path in RECORDED:
        recorded = json.loads(path.read_text())
        settings = config.read_settings(recorded)
        stage2 = recorded["stage"] == "stage2"
        assert type(settings) is (config.Stage2Settings if stage2 else config.TrainingSettings), path
        assert config.unknown_keys(recorded) == [], path
        for setting_field in dataclasses.fields(settings):
            key, value = config.key_of(setting_field), getattr(settings, setting_field.name)
            if key in recorded:
                assert value == recorded[key], (path, key)
            else:
                missing.add(key)
                assert value == setting_field.metadata.get("legacy", setting_field.default), (path, key)
    assert {"precision", "eval_order", "max_target_tokens"} <= missing


def test_a_run_made_before_a_setting_existed_reads_as_it_ran() -> None:
    recorded = json.loads((FIXTURES / "runs" / "20261125-165136-stage1-rte" / "config.json").read_text())
    assert not {"precision", "max_target_tokens", "eval_order", "init_sha256"} & set(recorded)
    settings = config.read_settings(recorded)
    assert (settings.precision, settings.max_target_tokens, settings.eval_order) == ("fp32", None, "length")
    assert config.TrainingSettings().precision == "auto"  # what a new run gets instead


def test_a_config_with_a_key_of_a_newer_version_trains_keeps_it_and_says_so(runs_dir: Path, data_dir: Path):
    """A key this version does not know is no crash: the run trains on the settings it knows, the file
    keeps the key, and the run's log names it."""
    made = config.stage1_config(
        "rte", model="tiny-llama", prompt_length=4, k_shot=8, max_eval=4, steps=2, eval_every=2,
        data_dir=str(data_dir),
    )  # fmt: skip
    newer = {**made, "warp_factor": 9}
    assert config.read_settings(newer) == config.read_settings(made)
    assert config.unknown_keys(newer) == ["warp_factor"]
    run_dir = create_run(runs_dir, "stage1", "rte", newer)
    assert run_worker(run_dir) == 0, (run_dir / "worker.log").read_text()[-2000:]
    assert summarize(run_dir).status == "completed"
    assert read_config(run_dir)["warp_factor"] == 9
    warnings = [
        e.message for e in read_events(run_dir / EVENTS) if isinstance(e, Log) and e.level == "warning"
    ]
    assert warnings == ["config.json: warp_factor unknown to this version of dtvg, kept but not used"]
