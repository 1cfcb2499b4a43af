"""New run: forms for stage 1, stage 2 and pipeline files, validated in place, launching detached workers.

Configs are built by the engine's own `dtvg_engine.config` (the same checks as `dtvg run`), the run
folder by `runfolder.create_run`, and the worker started by `launcher.launch_worker` in its own process
group, exactly as `dtvg run … --detach` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.validation import Integer, Number
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    Select,
    SelectionList,
    Static,
    TabbedContent,
    TabPane,
)

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import method_registry
from dtvg_engine.runs import launcher
from dtvg_engine.runs.runfolder import TPV, create_run
from dtvg_engine.train import tasks
from dtvg_tui import keys

INIT_KEYS = ("model", "prompt_length", "init_seed")
"""What makes two stage-1 runs share an initialization (and so their TPVs combinable)."""

STAGE1_FORM = (
    *INIT_KEYS,
    "steps",
    "batch_size",
    "lr",
    "k_shot",
    "eval_every",
    "max_eval",
    "seed",
    "data_dir",
    "device",
)
"""The settings the Stage 1 tab asks for, in its order; each field's label, default, placeholder and
check come from the setting's field in `config` (the other settings take their defaults)."""
STAGE2_FORM = ("grouping", "source_scale_lr", *(key for key in STAGE1_FORM if key not in INIT_KEYS))
"""The Stage 2 tab's settings (the init's come from the init picked)."""


def finished_stage1_runs(summaries: list[Any]) -> dict[tuple[str, int, int], dict[str, str]]:
    """Completed stage-1 runs with a TPV, by init (model, prompt length, init seed): task → newest run dir."""
    from dtvg_engine.runs.runfolder import read_config

    by_init: dict[tuple[str, int, int], dict[str, str]] = {}
    for summary in sorted(summaries, key=lambda s: s.run_id):
        if summary.stage != "stage1" or summary.status != "completed":
            continue
        run_dir = Path(summary.run_dir)
        if not (run_dir / TPV).is_file():
            continue
        try:
            config = read_config(run_dir)
        except UserError:
            continue
        init = (
            str(config.get("model")),
            int(config.get("prompt_length") or 0),
            int(config.get("init_seed") or 0),
        )
        by_init.setdefault(init, {})[summary.task] = summary.run_dir
    return by_init


def bank_sources() -> dict[tuple[str, int, int], set[str]]:
    """The source bank's tasks by init (model, prompt length, init seed): stage 2 takes a source's bank
    vector when no local stage-1 run of that init has one (`config.stage2_config`)."""
    from dtvg_engine.method import bank

    return {init.settings: set(init.vectors) for init in bank.inits() if init.settings}


def _row(label: str, widget: Any) -> Horizontal:
    return Horizontal(Label(label), widget, classes="form-row")


def setting_row(prefix: str, key: str, default: Any) -> Horizontal:
    """The form's row of setting `key` (widget id `<prefix>-<key>`): its label, and a choice of its
    rule's values or a text field holding `default`, with the placeholder for a value left out."""
    setting = configs.SETTINGS_BY_KEY[key]
    rule = setting.metadata["rule"]
    label = setting.metadata.get("label", key.replace("_", " ").capitalize())
    widget_id = f"{prefix}-{key}"
    if rule.choices:
        choices = [(c, c) for c in rule.choices]
        return _row(label, Select(choices, value=default, id=widget_id, allow_blank=False))
    envvar = setting.metadata.get("envvar")
    value = os.environ.get(envvar, "") if envvar else "" if default is None else str(default)
    checks = {int: [Integer(rule.low)], float: [Number(rule.low)]}.get(rule.kind, [])
    placeholder = setting.metadata.get("unset", "")
    return _row(label, Input(value, placeholder=placeholder, id=widget_id, compact=True, validators=checks))


def parse_setting(key: str, text: str) -> Any:
    """A setting's value as the form holds it: None when left empty, else of its rule's type (a path
    absolute); ValueError when a number does not parse."""
    rule = configs.SETTINGS_BY_KEY[key].metadata["rule"]
    if not text:
        return None
    if rule == configs.PATH:
        return str(Path(text).expanduser().resolve())
    return rule.kind(text) if rule.kind in (int, float) else text


class NewRunScreen(Screen[None]):
    """Launch stage-1 runs (one per task), a stage-2 run, or a pipeline file."""

    BINDINGS = keys.NEW_RUN_BINDINGS

    def __init__(self) -> None:
        super().__init__()
        summaries = list(self.app.index.all()) if self.app else []
        self.inits = finished_stage1_runs(summaries)
        """Finished stage-1 runs by shared init."""
        self.bank_problem = ""
        """Why the source bank could not be read (a damaged index), shown on the Stage 2 tab."""
        try:
            self.bank = bank_sources()
            """The source bank's tasks by shared init."""
        except UserError as e:
            self.bank, self.bank_problem = {}, f"✗ {e}"

    def compose(self) -> ComposeResult:
        # the form opens on the default model's defaults
        d = {**configs.defaults_for(configs.TRAINING_DEFAULTS["model"]), **configs.STAGE2_DEFAULTS}
        trainable = tasks.trainable_tasks()
        yield Header()
        yield Static(id="new-run-error")
        with TabbedContent(id="new-run-tabs"):
            with TabPane("Stage 1", id="tab-stage1"), VerticalScroll(classes="form", can_focus=False):
                yield Label("Tasks (space to pick; one run each):")
                yield SelectionList[str](*[(t, t) for t in trainable], id="s1-tasks")
                for key in STAGE1_FORM:
                    yield setting_row("s1", key, d[key])
                yield Button("Launch stage 1 (ctrl+l)", variant="success", id="s1-launch")
            with TabPane("Stage 2", id="tab-stage2"), VerticalScroll(classes="form", can_focus=False):
                yield _row(
                    "Initialization",
                    Select(self._init_options(), id="s2-init", prompt="stage-1 vectors by init"),
                )
                yield _row(
                    "Method",
                    Select(
                        [(m, m) for m in method_registry.NAMES],
                        value=d["method"],
                        id="s2-method",
                        allow_blank=False,
                    ),
                )
                yield _row(
                    "Target", Select([(t, t) for t in trainable], id="s2-target", prompt="target task")
                )
                yield Label("Sources (finished stage-1 runs of this init, or the source bank's):")
                yield SelectionList[str](id="s2-sources")
                for key in STAGE2_FORM:
                    yield setting_row("s2", key, d[key])
                yield Button("Launch stage 2 (ctrl+l)", variant="success", id="s2-launch")
            with TabPane("Pipeline", id="tab-pipeline"), VerticalScroll(classes="form", can_focus=False):
                yield Label(
                    "A pipeline TOML file (`dtvg run pipeline FILE`): stage 1 for every task needed, "
                    "reusing finished runs, then stage 2."
                )
                yield _row("Pipeline file", Input(placeholder="path/to/experiment.toml", id="pl-file"))
                yield Button("Launch pipeline (ctrl+l)", variant="success", id="pl-launch")
        yield Footer()

    def _init_options(self) -> list[tuple[str, tuple[str, int, int]]]:
        """Every init with vectors: local finished stage-1 runs, the source bank's, or both."""
        options = []
        for init in sorted(set(self.inits) | set(self.bank)):
            model, length, seed = init
            counts = [
                f"{len(self.inits[init])} local" if init in self.inits else "",
                f"{len(self.bank[init])} in the bank" if init in self.bank else "",
            ]
            options.append((f"{model}  r={length}  seed={seed}  ({', '.join(c for c in counts if c)})", init))
        return options

    def on_mount(self) -> None:
        self.sub_title = f"New run in {self.app.runs_dir}"
        # open on the one init there are local runs of (or, with none, the bank's one)
        candidates = list(self.inits) or list(self.bank)
        if len(candidates) == 1:
            self.query_one("#s2-init", Select).value = candidates[0]
        self.query_one("#s1-tasks", SelectionList).focus()

    # ----- reading the form -----

    def _value(self, widget_id: str) -> str:
        widget = self.query_one(f"#{widget_id}")
        if isinstance(widget, Select):
            return "" if widget.is_blank() else str(widget.value)
        assert isinstance(widget, Input)
        if widget.validators and widget.value.strip():
            result = widget.validate(widget.value)
            if result is not None and not result.is_valid:
                label = widget_id.split("-", 1)[1].replace("_", " ")
                raise UserError(f"{label}: {'; '.join(result.failure_descriptions)}")
        return widget.value.strip()

    def _settings(self, prefix: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """The settings `keys` as the tab `prefix` holds them (None: left out, the default)."""
        return {key: parse_setting(key, self._value(f"{prefix}-{key}")) for key in keys}

    def stage1_configs(self) -> list[dict[str, Any]]:
        """The configs the Stage 1 tab describes (UserError when it is incomplete or invalid)."""
        chosen = list(self.query_one("#s1-tasks", SelectionList).selected)
        if not chosen:
            raise UserError("pick at least one task (space in the task list)")
        settings = self._settings("s1", STAGE1_FORM)
        return [configs.stage1_config(task, **settings) for task in chosen]

    def stage2_config(self) -> dict[str, Any]:
        """The config the Stage 2 tab describes (UserError when it is incomplete or invalid)."""
        init = self.query_one("#s2-init", Select)
        if init.is_blank():
            raise UserError(
                "pick an initialization: stage 2 needs finished stage-1 runs (launch stage 1 first)"
            )
        model, prompt_length, init_seed = init.value  # type: ignore[misc]
        target = self._value("s2-target")
        if not target:
            raise UserError("pick a target task")
        method = self._value("s2-method")
        sources = list(self.query_one("#s2-sources", SelectionList).selected)
        local = self.inits.get(init.value, {})  # type: ignore[call-overload]
        tpv_runs = [local[s] for s in sources if s in local]  # the others come from the bank
        settings = self._settings("s2", STAGE2_FORM)
        return configs.stage2_config(
            target,
            sources,
            method,
            self.app.runs_dir,
            tpv_runs=tpv_runs,
            model=model,
            prompt_length=prompt_length,
            init_seed=init_seed,
            **settings,
        )

    # ----- reacting -----

    @on(Select.Changed, "#s2-init")
    @on(Select.Changed, "#s2-target")
    def _refresh_sources(self) -> None:
        init = self.query_one("#s2-init", Select)
        sources = self.query_one("#s2-sources", SelectionList)
        target = self._value("s2-target")
        keep = set(sources.selected)
        sources.clear_options()
        if not init.is_blank():
            local = self.inits.get(init.value, {})  # type: ignore[call-overload]
            shipped = self.bank.get(init.value, set())  # type: ignore[call-overload]
            for task in sorted(set(local) | shipped):
                if task != target:
                    label = task if task in local else f"{task} (bank)"
                    sources.add_option((label, task, task in keep))
        self._validate()

    @on(Input.Changed)
    @on(SelectionList.SelectedChanged)
    @on(Select.Changed)
    def _validate(self) -> None:
        """Show the first problem of the visible form (or nothing)."""
        error = self.query_one("#new-run-error", Static)
        tab = self.query_one("#new-run-tabs", TabbedContent).active
        try:
            if tab == "tab-stage1" and self.query_one("#s1-tasks", SelectionList).selected:
                self.stage1_configs()
            elif tab == "tab-stage2" and not self.query_one("#s2-init", Select).is_blank():
                if self._value("s2-target"):
                    self.stage2_config()
        except (UserError, ValueError) as e:
            error.update(f"✗ {e}")
            return
        error.update(self.bank_problem if tab == "tab-stage2" else "")  # local runs still work without it

    @on(Button.Pressed, "#s1-launch")
    @on(Button.Pressed, "#s2-launch")
    @on(Button.Pressed, "#pl-launch")
    def action_launch(self) -> None:
        """Validate the visible tab and launch it."""
        tab = self.query_one("#new-run-tabs", TabbedContent).active
        error = self.query_one("#new-run-error", Static)
        try:
            if tab == "tab-pipeline":
                self._launch_pipeline()
                return
            if tab == "tab-stage1":
                planned = [(c["task"], c) for c in self.stage1_configs()]
                stage = "stage1"
            else:
                config = self.stage2_config()
                planned = [(f"{config['target']}-{config['method']}", config)]
                stage = "stage2"
            launched = []
            for label, config in planned:
                run_dir = create_run(self.app.runs_dir, stage, label, config)
                launcher.launch_worker(run_dir)
                launched.append(run_dir.name)
        except (UserError, ValueError, OSError) as e:
            error.update(f"✗ {e}")
            return
        error.update("")
        self.notify("Launched " + ", ".join(launched))
        self.app.runs_screen.refresh_runs()
        self.dismiss()

    def _launch_pipeline(self) -> None:
        """Start `dtvg run pipeline FILE` as the study view's `g` does (a bad file is refused here)."""
        from dtvg_engine.studies.studyprocess import start_pipeline

        path = Path(self._value("pl-file")).expanduser()
        _, log_path = start_pipeline(path, Path(self.app.runs_dir))
        self.notify(f"Pipeline started; its runs appear here as they start (log: {log_path})")
        self.dismiss()

    def action_back(self) -> None:
        self.dismiss()
