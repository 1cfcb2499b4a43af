"""The study report's group trajectory: only the steps where DTVG's source group changed."""

from dtvg_engine.report import trajectory


def test_trajectory_keeps_the_first_step_and_every_change() -> None:
    steps = [(1, ("qnli", "mnli")), (2, ("qnli", "mnli")), (3, ("qnli",)), (4, ("qnli",)), (5, ())]
    assert trajectory(steps) == [(1, ("qnli", "mnli")), (3, ("qnli",)), (5, ())]


def test_a_reranked_group_is_no_change() -> None:
    """Events list the group in ranking order; the same sources in another order are the same group."""
    assert trajectory([(1, ("a", "b")), (2, ("b", "a")), (3, ("b",))]) == [(1, ("a", "b")), (3, ("b",))]
