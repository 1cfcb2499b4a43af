"""A study as a plan: the runs it needs, each a slot (stage, task, method entry, seed) with its settings.

`plan(spec)` is computed forward from the study file, once: the pipeline makes a run for each slot (and
records the slot in the run's config.json), and the study view, `dtvg runs report` and the results
files join runs to slots by that record (`study.slot_of`). Standard library only (the dashboard plans).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dtvg_engine import config as configs
from dtvg_engine.method import bank, method_registry
from dtvg_engine.studies.studyfile import StudySpec

SlotKey = tuple[str, str, str, int | None]
"""(stage, task, entry, seed): what names a slot within its study."""


@dataclass(frozen=True)
class Slot:
    """One run a study needs."""

    stage: str
    """"stage1" or "stage2"."""
    task: str
    """The stage-1 task, or the stage-2 target."""
    entry: str
    """The study's method entry (`dtvg`, `dtvg:prefix`; its rule: `fixed`); "pt" for stage 1."""
    seed: int | None
    """None for a source's stage-1 run, which serves every seed."""
    settings: dict[str, Any] = field(hash=False)
    """What the study gives the run's config (`config.stage1_config` / `stage2_config` resolve it)."""
    same_as: SlotKey | None = None
    """The stage-1 slot whose run is this slot's too: `pt` at the settings of the target's own
    stage-1 run T_t is that run, so it is trained once."""

    @property
    def key(self) -> SlotKey:
        return self.stage, self.task, self.entry, self.seed

    @property
    def label(self) -> str:
        """The slot in its run's id: `mnli`, `rte-s0`, `rte-dtvg-prefix-s0`."""
        if self.stage == "stage1":
            return self.task if self.seed is None else f"{self.task}-s{self.seed}"
        return f"{self.task}-{method_registry.run_label(self.entry)}-s{self.seed}"

    def record(self, study: str) -> dict[str, Any]:
        """What a run made for this slot records in its config.json, under `"slot"`."""
        return {
            "study": study,
            "stage": self.stage,
            "task": self.task,
            "entry": self.entry,
            "seed": self.seed,
        }

    def fixed(self, grouping: str) -> dict[str, Any]:
        """The config values its entry fixes: the method, and a grouped method's rule (`grouping`: the
        study's default)."""
        if self.stage == "stage1":
            return {"method": "pt"}
        return method_registry.entry_settings(self.entry, grouping)


def study_init_id(spec: StudySpec) -> str:
    """The id of the shared init the study's runs tune from (its model, prompt length and init seed,
    with the defaults its runs get)."""
    shared = {key: spec.shared[key] for key in ("model", "prompt_length", "init_seed") if key in spec.shared}
    made = configs.stage1_config(spec.sources[0], **shared)
    return configs.init_id(made["model"], made["prompt_length"], made["init_seed"])


def banked_sources(spec: StudySpec) -> dict[str, bank.BankVector]:
    """The study's sources the pipeline takes from the source bank instead of training them (task →
    vector, in study order): those the bank holds for the study's init, unless it sets `bank = false`."""
    if not spec.bank:
        return {}
    ident = study_init_id(spec)
    found = {task: bank.find(ident, task) for task in spec.sources}
    return {task: vector for task, vector in found.items() if vector is not None}


def needs_target_runs(spec: StudySpec) -> bool:
    """Whether a method of the study needs each target's own stage-1 run T_t."""
    return any(method_registry.parse(entry)[0].needs_target_run for entry in spec.methods)


def plan(spec: StudySpec, banked: dict[str, bank.BankVector] | None = None) -> list[Slot]:
    """Every run the study needs, in the order the pipeline makes them.

    Stage 1: each source once at the `[stage1]` settings (but those taken from the source bank,
    `banked`); when a method needs T_t, each target once per seed on that seed's k-shot sample and
    split (the stage-2 k-shot and decoding length), so no trial sees another's shots or checks its T_t
    on rows that are another trial's test set. Stage 2: every target × method entry × seed at the
    `[stage2]` settings.
    """
    banked = banked_sources(spec) if banked is None else banked
    stage1 = spec.shared | spec.stage1
    slots = [Slot("stage1", task, "pt", None, stage1) for task in spec.sources if task not in banked]
    own: dict[tuple[str, int], Slot] = {}
    if needs_target_runs(spec):
        # the stage-2 k-shot, and as long a text as the target's stage-2 runs write (generation)
        shots = {"k_shot": spec.stage2.get("k_shot", spec.stage1.get("k_shot"))}
        length = spec.stage2.get("max_target_tokens", spec.stage1.get("max_target_tokens"))
        shots |= {"max_target_tokens": length} if length is not None else {}
        for task in spec.targets:
            for seed in spec.seeds:
                own[task, seed] = Slot("stage1", task, "pt", seed, stage1 | shots | {"seed": seed})
        slots += own.values()
    for target in spec.targets:
        for entry in spec.methods:
            for seed in spec.seeds:
                settings = spec.shared | spec.stage2 | {"seed": seed}
                slot = Slot("stage2", target, entry, seed, settings)
                twin = own.get((target, seed))
                if twin is not None and _same_run(slot, twin):
                    slot = Slot("stage2", target, entry, seed, settings, same_as=twin.key)
                slots.append(slot)
    return slots


def _same_run(slot: Slot, target_run: Slot) -> bool:
    """Whether a stage-2 slot would train exactly its target's own stage-1 run: a method that tunes as
    stage 1 does, with every training setting (defaults of the model included) the same."""
    if not method_registry.parse(slot.entry)[0].tunes_as_stage1:
        return False
    return _training(slot.settings) == _training(target_run.settings)


def _training(given: dict[str, Any]) -> dict[str, Any]:
    """The training settings a run given `given` gets (its model's defaults, then what was given)."""
    given = {
        key: value for key, value in given.items() if value is not None and key in configs.TRAINING_DEFAULTS
    }
    return configs.defaults_for(given.get("model", configs.TRAINING_DEFAULTS["model"])) | given
