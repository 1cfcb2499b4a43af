"""The study files shipped in experiments/: each must load, and the NLG study must run on what the
repository ships (the bank's sources, generation targets), so its later run trains no source."""

from pathlib import Path

import pytest

from dtvg_engine.studies.studyfile import load_experiment
from dtvg_engine.studies.studyplan import banked_sources
from dtvg_engine.train import tasks

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_loads(path: Path) -> None:
    spec = load_experiment(path)
    assert spec.targets and spec.methods and spec.seeds


def test_nlg_study_transfers_the_whole_bank_to_generation_targets() -> None:
    spec = load_experiment(EXPERIMENTS / "nlg.toml")
    assert all(tasks.get_task(target).generation for target in spec.targets)
    assert tuple(banked_sources(spec)) == spec.sources  # every source shipped: none is trained
    assert {"pt", "pt-fair", "only-target", "spot", "tpv-top1", "dtvg"} <= set(spec.methods)
    assert spec.seeds == (0, 1, 2)
