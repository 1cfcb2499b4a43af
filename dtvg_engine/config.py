"""Run configurations: every setting's one home (its default, help and rule), and the checks shared by
the CLI, the TUI form and the pipeline.

Each setting is a field of `TrainingSettings` or `Stage2Settings`; the CLI's options, the New-run form's
fields and what a study file accepts are derived from these fields (docs/architecture.md, 'Settings').
Standard library only (the TUI builds configs through this module). A config is a plain JSON-able
dict written to `config.json` before the worker starts; the worker reads nothing else.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from dtvg_engine.errors import UserError
from dtvg_engine.method import method_registry
from dtvg_engine.method.method_registry import GROUPINGS
from dtvg_engine.train import tasks

BUILTIN_MODELS = ("smollm2-135m", "tiny-llama", "tiny-t5")
"""Names resolved without a hub or a path: the pretrained default and two tiny random test models."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
"""`--precision` of the frozen model (`backbones.resolve_precision`); the prompt always trains in fp32."""
EVAL_ORDERS = ("length", "data")
"""How evaluation batches are cut: from the rows sorted by length, so each pads to about its own length,
or in data order (how runs evaluated before; the reference benchmarks/study_throughput.py measures
against). The predictions are the same either way."""


def check_model_name(name: str) -> None:
    """Refuse a model name that is neither built in, nor a local folder, nor shaped like a hub id."""
    if name in BUILTIN_MODELS or Path(name).expanduser().exists():
        return
    if "/" in name and not name.startswith((".", "/", "~")):
        return
    raise UserError(
        f"unknown model {name!r}; use one of {', '.join(BUILTIN_MODELS)}, a local model folder, "
        "or a Hugging Face id like org/name"
    )


def model_slug(name: str) -> str:
    """A filesystem-safe short form of a model name, used in init ids and file names."""
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name.lower()).strip("-")


def init_id(model: str, prompt_length: int, init_seed: int) -> str:
    """The id of the shared P_init of these settings (its file name under `runs/_inits/`)."""
    return f"{model_slug(model)}-r{prompt_length}-s{init_seed}"


MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # lr {0.003, 0.03, 0.3} x prompt length {8, 100}, stage 1 on snli and qqp, 32-shot targets sst2 and cb:
    # 8 tokens at 0.3 had the best validation mean over the four tasks (the rule fixed beforehand), and
    # 100 tokens cost 25% more per step for no gain measured. docs/sweep.md
    "smollm2-135m": {"prompt_length": 8, "lr": 0.3},
}
"""Settings swept for one backbone on validation data, over `TRAINING_DEFAULTS` (the papers' values,
which every other backbone keeps). The sweep and its figures: docs/sweep.md."""


def defaults_for(model: str) -> dict[str, Any]:
    """The training defaults of runs on `model`: the papers' values, with the model's swept ones."""
    return {**TRAINING_DEFAULTS, **MODEL_DEFAULTS.get(model, {})}


MAX_PROMPT_LENGTH = 1024
"""The longest soft prompt accepted: the papers use 100 tokens, and every step costs ~r² attention, so a
typo like 100000 would make minutes-long steps (and a detached worker that outlives the command)."""

MAX_TARGET_TOKENS = 1024
"""The longest generation length accepted: each new token is a decoding step, so a typo like 100000
would make a run decode for hours."""


@dataclass(frozen=True)
class Rule:
    """The values one setting accepts: its type, inclusive bounds (`low` exclusive when `above`),
    a fixed set of choices, and whether None (not set) is allowed. Numbers must be finite."""

    kind: type
    low: float | None = None
    high: float | None = None
    above: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (not self.choices or value in self.choices)
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """What the rule accepts, in words: "an integer from 1 to 1024", "a number above 0", ..."""
        if self.choices:
            what = f"one of {', '.join(self.choices)}"
        else:
            what = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[
                self.kind
            ]
            if self.low is not None and self.high is not None:
                what += f" from {_number(self.low)} to {_number(self.high)}"
            elif self.low is not None:
                low = _number(self.low)
                what += f" above {low}" if self.above else f" of at least {low}"
        return what + (" (or left out)" if self.optional else "")


MAX_SEED = 2**32 - 1
"""The largest seed: the batch order seeds torch with `seed * 100_003 + epoch`, which must stay below 2^64."""


def _number(value: float) -> str:
    """A bound as written: an integer whole (4294967295, not 4.29497e+09), a float short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


COUNT = Rule(int, low=1)
SEED = Rule(int, low=0, high=MAX_SEED)
PATH = Rule(str, optional=True)
RATE = Rule(float, low=0, above=True)


def setting(default: Any, help: str, rule: Rule | None, **more: Any) -> Any:
    """A field of a settings class: its default, its one-line help (the CLI's and the form's) and its rule,
    in field metadata as peft's configs keep theirs. `more`: `key` (the name in config.json and study
    files, where it is no Python name: `lambda`), `label` and `unset` (the New-run form's label, and its
    placeholder for a setting left out), `envvar` (the CLI reads it from the environment), `shared` (a
    study sets it once, at its top level, for every run), `legacy` (what a run whose config.json was
    written before the setting existed ran with, when that is not the default; `read_settings`)."""
    return field(default=default, metadata={"help": help, "rule": rule, **more})


@dataclass(frozen=True)
class TrainingSettings:
    """The settings of every run, with their defaults (lr 0.3 and weight decay 1e-5 as in the papers).

    Inputs longer than `max_input_tokens` are cut in their longest text field; None fits it to the task's
    data (the length that holds 95% of the run's inputs whole, at most 256 tokens, the papers' input
    length). Evaluation runs in length-sorted batches of `eval_batch_size` rows: 16 evaluated the most rows
    per CPU second with whole inputs (8 as fast, 32 and 64 slower: more padding;
    benchmarks/eval_batch_size.py, docs/performance.md).
    """

    model: str = setting(
        "smollm2-135m",
        "smollm2-135m, tiny-llama, tiny-t5, a local folder or an HF id.",
        Rule(str),
        shared=True,
    )
    prompt_length: int = setting(
        100, "Soft prompt tokens r.", Rule(int, low=1, high=MAX_PROMPT_LENGTH), shared=True
    )
    steps: int = setting(100, "Training steps.", COUNT)
    batch_size: int = setting(8, "Training examples per step.", COUNT)
    lr: float = setting(
        0.3, "AdamW learning rate (stage 2: of the target prompt and its scale).", RATE, label="Learning rate"
    )
    weight_decay: float = setting(1e-5, "AdamW weight decay.", Rule(float, low=0))
    warmup_ratio: float = setting(
        0.1, "Share of the steps the learning rate warms up over.", Rule(float, low=0, high=1)
    )
    max_grad_norm: float = setting(1.0, "Clip the gradient to this norm.", RATE)
    k_shot: int | None = setting(
        None,
        "Train on K examples, class-stratified (default: all).",
        Rule(int, low=1, optional=True),
        label="K-shot",
        unset="all",
    )
    eval_every: int = setting(25, "Validate every E steps.", COUNT)
    eval_batch_size: int = setting(16, "Rows per evaluation batch (changes no prediction).", COUNT)
    max_eval: int = setting(200, "Cap validation/test examples.", COUNT)
    max_input_tokens: int | None = setting(
        None,
        "Cut longer inputs in their longest text field (default: the length that holds 95% of the "
        "task's inputs whole, at most 256).",
        Rule(int, low=1, optional=True),
    )
    max_target_tokens: int | None = setting(
        None,
        "Generation tasks: cut targets to, and stop greedy decoding after, this many tokens "
        "(end of sequence included; default: 128, the papers' length).",
        Rule(int, low=1, high=MAX_TARGET_TOKENS, optional=True),
        unset="128",
    )
    seed: int = setting(0, "Data split, sampling and batch-order seed.", SEED)
    init_seed: int = setting(0, "Seed of the shared prompt initialization.", SEED, shared=True)
    device: str = setting("auto", "auto, cpu or cuda.", Rule(str, choices=DEVICES), shared=True)
    precision: str = setting(
        "auto",
        "The frozen model's precision: auto (bf16 on a GPU, fp32 on CPU), fp32 or bf16.",
        Rule(str, choices=PRECISIONS),
        shared=True,
        legacy="fp32",
    )
    eval_order: str = setting(
        "length",
        "Cut evaluation batches from rows sorted by length, or in data order.",
        Rule(str, choices=EVAL_ORDERS),
    )
    data_dir: str | None = setting(
        None,
        "Folder of <task>/*.jsonl.",
        PATH,
        envvar="DTVG_DATA_DIR",
        unset="bundled demo data",
        shared=True,
    )
    init_prompt: str | None = setting(None, "Start from a prompt written by `dtvg tpv combine`.", PATH)


@dataclass(frozen=True)
class Stage2Settings(TrainingSettings):
    """A stage-2 run's settings: the training settings and the method's. The paper's few-shot two-speed
    rates are 0.3 (target) and 0.4 (source scales); `tpv-sum` adds the `top_k` sources ranked first by
    eq. 2 (the TPV paper combines pairs); `mix` trains the sources' prompt for `mix_steps` steps (None: as
    many as the sources' stage-1 runs had together)."""

    method: str = setting(
        "dtvg",
        f"One of {', '.join(method_registry.NAMES)}; a grouped one may name its rule: dtvg:prefix.",
        None,  # checked against the method registry
    )
    grouping: str = setting(
        "greedy", "dtvg grouping: greedy (Algorithm 2), prefix, exhaustive.", Rule(str, choices=GROUPINGS)
    )
    lambda_: float = setting(1.0, "λ of TS + λ·KC (exhaustive grouping).", Rule(float, low=0), key="lambda")
    source_scale_lr: float = setting(
        0.4, "Learning rate of the source scales (0 freezes them at 1).", Rule(float, low=0)
    )
    top_k: int = setting(2, "tpv-sum: add the TPVs of the top K sources by eq. 2.", COUNT)
    mix_steps: int | None = setting(
        None,
        "mix: steps on the sources' data (default: their stage-1 steps).",
        Rule(int, low=1, optional=True),
    )


def key_of(setting_field: Field[Any]) -> str:
    """A setting's name in config.json, study files and `SETTING_RULES` (`lambda_` is `lambda`)."""
    return setting_field.metadata.get("key", setting_field.name)


SETTINGS: tuple[Field[Any], ...] = fields(Stage2Settings)
"""Every setting, as a field that carries its default, help and rule; all else below derives from these."""

SETTINGS_BY_KEY: dict[str, Field[Any]] = {key_of(f): f for f in SETTINGS}

TRAINING_DEFAULTS: dict[str, Any] = {key_of(f): f.default for f in fields(TrainingSettings)}
"""The settings of every run and their defaults, in config.json's order (`TrainingSettings`)."""

STAGE2_DEFAULTS: dict[str, Any] = {
    key: f.default for key, f in SETTINGS_BY_KEY.items() if key not in TRAINING_DEFAULTS
}
"""The stage-2 settings beyond the training ones, and their defaults (`Stage2Settings`)."""

SETTING_RULES: dict[str, Rule] = {
    key: f.metadata["rule"] for key, f in SETTINGS_BY_KEY.items() if f.metadata["rule"]
}
"""The rule of every setting (the method is checked against the method registry)."""

RUN_KEYS = frozenset({
    "run_id", "created", "stage", "method", "task", "target", "sources", "stage1_runs", "bank_sources",
    "primary_metric", "target_stage1_steps", "split", "init_sha256", "slot", "runs_dir", tasks.RECORD_KEY,
})  # fmt: skip
"""The keys the engine writes in config.json beside the settings: what the run is, what it transfers from,
its data split, init checksum and study slot (`runs_dir` in runs of older versions); a stage-1 run's
`method` is always "pt"."""


def read_settings(config: Mapping[str, Any]) -> TrainingSettings:
    """The typed settings of a run's config.json as read: `Stage2Settings` for a stage-2 run.

    A setting written by no older version takes its `legacy` value, what such runs ran with (`precision`:
    fp32), else its default (`max_target_tokens`: None, decode up to 128 tokens). Keys this version does
    not know are left out here and kept in the file; `unknown_keys` names them. The values are those of
    the file: `check_run_config` checks them.
    """
    kind = Stage2Settings if config.get("stage") == "stage2" else TrainingSettings
    return kind(**{f.name: config.get(key_of(f), f.metadata.get("legacy", f.default)) for f in fields(kind)})


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """The keys of a run's config.json that are neither settings nor `RUN_KEYS`: written by a newer
    version (or by hand), kept in the file, used by nothing here."""
    return [key for key in config if key not in SETTINGS_BY_KEY and key not in RUN_KEYS]


SWEPT_KEYS = frozenset(key for swept in MODEL_DEFAULTS.values() for key in swept)
"""Settings whose default depends on the model (`MODEL_DEFAULTS`)."""

JOBS_RULE = COUNT
"""`--jobs` / a study's `jobs`: how many runs at once, or `auto` (see `parse_jobs`)."""


def parse_jobs(label: str, value: Any) -> int | str:
    """`--jobs N|auto` or a study's `jobs`: a positive count, or "auto" (as many workers as the cores,
    GPUs and memory hold, `workers.parallel_runs`); a one-line UserError naming `label` otherwise."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not JOBS_RULE.accepts(value):
        raise UserError(f"{label} must be a positive integer or auto (got {value!r})")
    return value


def cli_flag(key: str) -> str:
    """How the command line spells a setting: `prompt_length` -> `--prompt-length`."""
    return "--" + key.replace("_", "-")


def check_value(label: str, value: Any, rule: Rule) -> None:
    """Refuse a value its rule does not accept, naming it by `label` (a flag, or a key of a file)."""
    if not rule.accepts(value):
        raise UserError(f"{label} must be {rule.describe()} (got {value!r})")


def check_settings(settings: dict[str, Any], label: Callable[[str], str] = cli_flag) -> None:
    """Refuse settings of the wrong type or out of range, each named by `label(key)`.

    The one place the CLI, the TUI form and the pipeline check values, so all three refuse the same
    things with the same words; keys without a rule (the method) are checked by their callers.
    """
    for key, value in settings.items():
        if key in SETTING_RULES:
            check_value(label(key), value, SETTING_RULES[key])
    if "model" in settings:
        check_model_name(settings["model"])


def check_run_config(config: dict[str, Any], path: str | Path) -> None:
    """Refuse a run's config.json (`path`) that no new run could have had, before a worker starts on it:
    it may have been edited since, by hand or by someone else. Its stage, task (or target and method)
    and every setting in it must pass the checks of a new run (`check_settings`); the keys the engine
    writes beside the settings (`run_id`, `created`, `split`, `init_sha256`, `stage1_runs`, ...) are not
    settings, and pass."""
    try:
        stage = config.get("stage")
        if stage not in ("stage1", "stage2"):
            raise UserError(f"stage must be stage1 or stage2 (got {stage!r})")
        key = "task" if stage == "stage1" else "target"
        if not isinstance(config.get(key), str):
            raise UserError(f"{key} must be a task name (got {config.get(key)!r})")
        tasks.adopt(config, str(path))  # a user task is known by the definition the run recorded
        tasks.get_task(config[key])
        if stage == "stage2":
            method = config.get("method")
            if not isinstance(method, str):
                raise UserError(f"method must be a method name (got {method!r})")
            method_registry.parse(method)
        check_settings({key: value for key, value in config.items() if key in SETTINGS_BY_KEY}, str)
    except UserError as e:
        raise UserError(f"{path}: {e}; fix the file, or start a new run") from None


def check_generation_settings(task: tasks.Task, settings: dict[str, Any]) -> None:
    """Refuse a generation length for a task that writes no text (it would be recorded, but mean nothing)."""
    if settings.get("max_target_tokens") is not None and not task.generation:
        raise UserError(
            f"max_target_tokens applies to generation tasks only; {task.name!r} is scored by label words, "
            "so leave it out for this task"
        )


def check_init_prompt(path: str, model: str, prompt_length: int, init_seed: int) -> None:
    """Refuse an `--init-prompt` file no run of these settings could start from, before a run exists.

    It must be a `dtvg tpv combine` prompt (a "prompt" tensor of shape [prompt_length, d]) made on the
    shared init of the same model, prompt length and init seed.
    """
    from safetensors import SafetensorError, safe_open  # no torch; imported here to keep this module light

    wanted = init_id(model, prompt_length, init_seed)
    try:
        kind = os.stat(path).st_mode
    except OSError as exc:
        raise UserError(f"--init-prompt {path}: {exc.strerror}") from None
    if not stat.S_ISREG(kind):  # a FIFO would hang the read, a device make it endless
        raise UserError(
            f"--init-prompt {path} is not a regular file; give a prompt written by `dtvg tpv combine`"
        )
    try:
        with safe_open(path, framework="numpy") as f:
            made_from = (f.metadata() or {}).get("init_id")
            shape = f.get_slice("prompt").get_shape() if "prompt" in f.keys() else None
    except (OSError, SafetensorError) as exc:
        raise UserError(f"--init-prompt {path}: not a prompt written by `dtvg tpv combine` ({exc})") from None
    if shape is None:
        raise UserError(f"--init-prompt {path} has no 'prompt' tensor; write one with `dtvg tpv combine`")
    if made_from != wanted:
        raise UserError(f"--init-prompt {path} was made on init {made_from}; this run uses {wanted}")
    if len(shape) != 2 or shape[0] != prompt_length:
        raise UserError(
            f"--init-prompt {path} holds a prompt of shape {list(shape)}, but init {wanted} has "
            f"{prompt_length} tokens; combine it again from runs of this init"
        )


def stage1_config(task: str, **overrides: Any) -> dict[str, Any]:
    """The resolved config of a stage-1 run of `task` (unknown keys are refused)."""
    unknown = set(overrides) - set(TRAINING_DEFAULTS)
    if unknown:
        raise UserError(f"unknown stage-1 setting(s): {', '.join(sorted(unknown))}")
    spec = tasks.get_task(task)
    if not spec.has_train:
        raise UserError(f"task {task!r} has no train split (evaluation-only); pick a task with training data")
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = {**defaults_for(given.get("model", TRAINING_DEFAULTS["model"])), **given}
    check_settings(settings)
    check_generation_settings(spec, settings)
    if settings["init_prompt"]:
        check_init_prompt(
            settings["init_prompt"], settings["model"], settings["prompt_length"], settings["init_seed"]
        )
    return {
        "stage": "stage1",
        "method": "pt",
        "task": task,
        "primary_metric": spec.primary,
        "created": time.time(),
        **settings,
        **tasks.recorded([task]),
    }


def _stage1_matches(config: dict[str, Any], settings: dict[str, Any]) -> bool:
    return all(config.get(key) == settings[key] for key in ("model", "prompt_length", "init_seed"))


SPLIT_KEYS = ("seed", "k_shot", "max_eval")
"""The settings that make a run's data split and shots: a target's T_t should share them with its
stage-2 run, so both see the same training shots and neither checks itself on the other's test rows."""


def _split_of(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config.get(key) for key in SPLIT_KEYS}


def find_stage1_run(
    runs_dir: str | Path, task: str, settings: dict[str, Any], same_split: bool = False
) -> Path:
    """The newest completed stage-1 run of `task` sharing model, prompt length and init seed; with
    `same_split`, the newest of those with the seed and split of `settings` when there is one."""
    found = _newest_stage1_run(runs_dir, task, settings, same_split)
    if found is None:
        raise _no_stage1_run(runs_dir, task, settings)
    return found


def _newest_stage1_run(
    runs_dir: str | Path, task: str, settings: dict[str, Any], same_split: bool = False
) -> Path | None:
    from dtvg_engine.runs.runfolder import TPV, list_run_dirs, read_config
    from dtvg_engine.runs.runstatus import summarize

    found = []
    for run_dir in reversed(list_run_dirs(runs_dir)):
        config = read_config(run_dir)
        if (
            config.get("stage") != "stage1"
            or config.get("task") != task
            or not _stage1_matches(config, settings)
        ):
            continue
        if (run_dir / TPV).is_file() and summarize(run_dir).status == "completed":
            if not same_split or _split_of(config) == _split_of(settings):
                return run_dir
            found.append(run_dir)
    return found[0] if found else None


def _no_stage1_run(runs_dir: str | Path, task: str, settings: dict[str, Any]) -> UserError:
    return UserError(
        f"no finished stage-1 run of {task!r} with model {settings['model']}, prompt length "
        f"{settings['prompt_length']} and init seed {settings['init_seed']} in {runs_dir}; run "
        f"`dtvg run stage1 {task} --model {settings['model']} --prompt-length {settings['prompt_length']} "
        f"--init-seed {settings['init_seed']}` first, or pass --tpv RUN"
    )


def _runs_by_task(runs_dir: str | Path, refs: list[str], settings: dict[str, Any]) -> dict[str, Path]:
    """Explicit `--tpv RUN` choices, keyed by their task; refuses runs of another init."""
    from dtvg_engine.runs.runfolder import TPV, find_run, read_config

    chosen: dict[str, Path] = {}
    for ref in refs:
        run_dir = find_run(runs_dir, ref)
        config = read_config(run_dir)
        tasks.adopt(config, str(run_dir / "config.json"))  # a user task's run carries its definition
        if config.get("stage") != "stage1" or not (run_dir / TPV).is_file():
            raise UserError(f"--tpv {ref}: run {run_dir.name} is not a completed stage-1 run with a TPV")
        if not _stage1_matches(config, settings):
            raise UserError(
                f"--tpv {ref}: run {run_dir.name} was tuned with model {config.get('model')}, prompt length "
                f"{config.get('prompt_length')}, init seed {config.get('init_seed')}, but this run uses "
                f"{settings['model']}, {settings['prompt_length']}, {settings['init_seed']}; "
                "TPVs of different initializations cannot be mixed"
            )
        chosen[config["task"]] = run_dir
    return chosen


def stage2_config(
    target: str,
    sources: list[str],
    method: str,
    runs_dir: str | Path,
    tpv_runs: list[str] | None = None,
    bank_tasks: Collection[str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The resolved config of a stage-2 run: the method, and the stage-1 vectors it transfers from.

    `method` is a registry name or an entry with a grouping rule (`dtvg:prefix`). The target's own
    stage-1 run, for the methods that need it, is the newest with this run's seed and split (else the
    newest; `describe_stage1_runs` says which). A `fair_budget` method's `steps` become T_t's stage-1
    steps plus these; `mix_steps` left unset becomes the sources' stage-1 steps together.
    A source without a local run takes the source bank's vector of the same init (`bank_sources`,
    `_source_vectors`); the pipeline names the sources it takes from the bank with `bank_tasks`.
    """
    stage2_keys = set(STAGE2_DEFAULTS) - {"method"}
    unknown = set(overrides) - set(TRAINING_DEFAULTS) - stage2_keys
    if unknown:
        raise UserError(f"unknown stage-2 setting(s): {', '.join(sorted(unknown))}")
    spec_method, fixed = method_registry.parse(method)
    spec = tasks.get_task(target)
    if not spec.has_train:
        raise UserError(
            f"target {target!r} has no train split (evaluation-only); pick a task with training data"
        )
    for source in sources:
        tasks.get_task(source)
    if target in sources:
        raise UserError(f"target {target!r} is also listed among its sources; remove it from --sources")
    if len(set(sources)) != len(sources):
        raise UserError(f"--sources lists a task twice: {','.join(sources)}")
    if spec_method.uses_sources and not sources and not tpv_runs:
        raise UserError(f"method {method!r} transfers from source tasks; give them with --sources A,B,...")
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = {
        **defaults_for(given.get("model", TRAINING_DEFAULTS["model"])),
        **STAGE2_DEFAULTS,
        **given,
        **fixed,
    }
    check_settings(settings)
    check_generation_settings(spec, settings)

    explicit = _runs_by_task(runs_dir, tpv_runs or [], settings)
    sources = (sources or [task for task in explicit if task != target]) if spec_method.uses_sources else []
    stage1_runs, bank_sources = _source_vectors(runs_dir, sources, settings, explicit, bank_tasks)
    if spec_method.needs_target_run:
        stage1_runs[target] = explicit.get(target) or find_stage1_run(
            runs_dir, target, settings, same_split=True
        )
    config = {
        "stage": "stage2",
        "target": target,
        "sources": list(sources),
        # by run id, resolved in the run's own runs directory: a runs directory can be moved whole
        "stage1_runs": {task: path.name for task, path in stage1_runs.items()},
        # only when there are some, so a run made before the bank matches its settings still
        **({"bank_sources": bank_sources} if bank_sources else {}),
        "primary_metric": spec.primary,
        "created": time.time(),
        **settings,
        "method": spec_method.name,
        **tasks.recorded([target, *sources]),
    }
    return config | _stage1_budgets(spec_method, config, runs_dir)


def _source_vectors(
    runs_dir: str | Path,
    sources: list[str],
    settings: dict[str, Any],
    explicit: dict[str, Path],
    bank_tasks: Collection[str] | None,
) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """Each source's stage-1 vector: its `--tpv` run, else the newest local completed run of the same
    init, else the source bank's (task → init id and sha256 of the file, which the run checks). With
    `bank_tasks` (the pipeline), those sources come from the bank and no other source does."""
    from dtvg_engine.method import bank

    ident = init_id(settings["model"], settings["prompt_length"], settings["init_seed"])
    runs: dict[str, Path] = {}
    banked: dict[str, dict[str, str]] = {}
    for task in sources:
        forced = bank_tasks is not None and task in bank_tasks
        local = explicit.get(task) or (None if forced else _newest_stage1_run(runs_dir, task, settings))
        vector = bank.find(ident, task) if local is None and (forced or bank_tasks is None) else None
        if local is not None:
            runs[task] = local
        elif vector is not None:
            bank.verified(vector.path, vector.sha256)  # a damaged file is refused before any run exists
            banked[task] = {"init_id": ident, "sha256": vector.sha256}
        else:
            raise _no_stage1_run(runs_dir, task, settings)
    if banked:
        bank.check_init(Path(runs_dir), ident)
    return runs, banked


def stage1_settings(runs_dir: str | Path, config: dict[str, Any], task: str) -> dict[str, Any]:
    """The settings the stage-1 vector of `task` a stage-2 config transfers was tuned with (its split
    and steps): its run's config, or the source bank's record of it."""
    from dtvg_engine.method import bank
    from dtvg_engine.runs.runfolder import read_config

    if task in config["stage1_runs"]:
        return read_config(Path(runs_dir) / Path(config["stage1_runs"][task]).name)
    return bank.named(task, config["bank_sources"][task]).config


def _stage1_budgets(
    method: method_registry.Method, config: dict[str, Any], runs_dir: str | Path
) -> dict[str, Any]:
    """The step settings a method takes from its stage-1 vectors: a budget-fair method trains T_t's
    stage-1 steps on top of its own (`target_stage1_steps` records them); `mix` without `mix_steps`
    trains the sources' prompt as long as the sources' stage-1 runs were trained together."""
    planned: dict[str, Any] = {}
    if method.fair_budget:
        earlier = int(stage1_settings(runs_dir, config, config["target"])["steps"])
        planned |= {"steps": config["steps"] + earlier, "target_stage1_steps": earlier}
    if method.init == "mix" and config["mix_steps"] is None:
        planned["mix_steps"] = sum(
            int(stage1_settings(runs_dir, config, task)["steps"]) for task in config["sources"]
        )
    return planned


def _data_of(config: dict[str, Any]) -> str:
    shots = f"{config['k_shot']}-shot" if config.get("k_shot") else "full data"
    return f"seed {config.get('seed')}, {shots}"


def describe_stage1_runs(runs_dir: str | Path, config: dict[str, Any]) -> list[str]:
    """Which stage-1 run a stage-2 config transfers from for each task, and whether the target's own
    run T_t shares its seed and split, or that a source's vector comes from the source bank (the CLI
    prints these lines, the worker logs them)."""
    from dtvg_engine.method import bank
    from dtvg_engine.runs.runfolder import read_config

    lines = []
    for task, shipped in (config.get("bank_sources") or {}).items():
        vector = bank.find(shipped["init_id"], task)
        where = vector.describe() if vector else f"from the source bank ({shipped['init_id']}), now missing"
        lines.append(f"stage-1 vector of {task}: {where}")
    for task, run_id in config["stage1_runs"].items():
        made = read_config(Path(runs_dir) / run_id)
        line = f"stage-1 run of {task}: {run_id} ({_data_of(made)})"
        if task == config["target"]:
            if _split_of(made) == _split_of(config):
                line += ", T_t with the same seed and split as this run"
            else:
                line += f", T_t of another seed or split than this run's ({_data_of(config)})"
        lines.append(line)
    return lines
