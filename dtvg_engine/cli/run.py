"""`dtvg run ...` and `dtvg demo`: create runs and start their workers, in the foreground or detached."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dtvg_engine import config as configs
from dtvg_engine.cli import slurm_options as so
from dtvg_engine.cli.common import RunsDir, TaskFile, out, runs_root, setting_option, with_settings
from dtvg_engine.cli.runs import show_table
from dtvg_engine.errors import UserError
from dtvg_engine.method import bank, method_registry
from dtvg_engine.runs import launcher, slurm, workers
from dtvg_engine.runs.runactions import check_action
from dtvg_engine.runs.runfolder import CONFIG, checkpoint_path, create_run, create_runs, find_run, read_config
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.train import tasks as task_registry
from dtvg_engine.train.modelcache import check_cache

if TYPE_CHECKING:
    from dtvg_engine.studies.studyfile import StudySpec

JOBS_HELP = "Runs at once: a number, or auto (as many as the cores or GPUs hold, each its share)."
DataDir = setting_option("data_dir")[0]

run_app = typer.Typer(
    help="Start runs: stage 1, stage 2, pipelines; resume stopped ones.", no_args_is_help=True
)


@run_app.command("stage1")
@with_settings(*configs.TRAINING_DEFAULTS)
@so.with_slurm_options()
def run_stage1(
    tasks: Annotated[list[str], typer.Argument(help="Tasks to tune a soft prompt for (one run each).")],
    settings: dict[str, Any],
    request: so.SlurmRequest,
    task_file: TaskFile = None,
    runs_dir: RunsDir = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start workers in the background and return.")
    ] = False,
    jobs: Annotated[str, typer.Option(help=JOBS_HELP)] = "auto",
) -> None:
    """Tune one soft prompt per task from the shared initialization and save its task prompt vector."""
    jobs = configs.parse_jobs("--jobs", jobs)
    task_registry.use_file(task_file)
    root = runs_root(runs_dir)
    settings = _resolve_paths(settings)
    planned = [configs.stage1_config(task, **settings) for task in tasks]
    for config in planned:
        _check_data(config["task"], config)
    first = planned[0]  # a P_init here that is damaged or not the bank's would be refused by every worker
    bank.check_init(root, configs.init_id(first["model"], first["prompt_length"], first["init_seed"]))
    if request.executor != "slurm":  # a Slurm job converts the model into its node's cache
        check_cache(first["model"])
    run_dirs = create_runs(root, "stage1", [(config["task"], config) for config in planned])
    _start(run_dirs, detach, jobs, request.resources())


def _resolve_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with their paths absolute (the data dir: the given one, else the default), so a run
    reads the same files from whatever folder its worker starts in."""
    from dtvg_engine.train.data import default_data_dir

    resolved = {
        key: str(Path(value).resolve()) if isinstance(value, Path) else value
        for key, value in settings.items()
    }
    resolved["data_dir"] = str(Path(settings["data_dir"] or default_data_dir()).resolve())
    return resolved


def _check_data(task: str, config: dict[str, Any]) -> None:
    """Read the run's data now, and check a user task's label words under the model's tokenizer: a bad
    file is an error here, not a failed run."""
    from dtvg_engine.train.data import load_splits

    data = Path(config["data_dir"])
    load_splits(task, data, seed=config["seed"], k_shot=config["k_shot"], max_eval=config["max_eval"])
    spec = task_registry.get_task(task)
    if spec.origin != task_registry.BUILTIN and spec.label_words:
        from dtvg_engine.train.backbones import load_tokenizer
        from dtvg_engine.train.scoring import check_label_words

        check_label_words(spec, load_tokenizer(config["model"]))


def _start(
    run_dirs: list[Path], detach: bool, jobs: int | str, resources: so.Resources | None = None
) -> None:
    """Launch created runs in the background, or follow them here until they end; with `resources`,
    submit them to Slurm instead (always in the background)."""
    if resources is not None:
        so.submit_new(run_dirs, resources, workers.array_width(jobs, len(run_dirs)))
        return
    if detach:  # all start now, each with its share of the cores
        devices = [read_config(run_dir).get("device", "auto") for run_dir in run_dirs]
        slots = workers.slot_environments(len(run_dirs), devices)
        for run_dir, slot in zip(run_dirs, slots, strict=True):
            launcher.launch_worker(run_dir, env=slot)
            print(run_dir.name)
        return
    from dtvg_engine.runs.watch import run_foreground

    statuses = run_foreground(run_dirs, jobs)
    show_table([summarize(d).to_dict() for d in run_dirs])
    if any(s != "completed" for s in statuses):
        for run_dir, status in zip(run_dirs, statuses, strict=True):
            if status == "failed":
                out.print(f"[red]{run_dir.name} failed:[/red] {summarize(run_dir).error}")
        raise typer.Exit(1)


@run_app.command("stage2")
@with_settings(*(key for key in configs.SETTINGS_BY_KEY if key != "init_prompt"))
@so.with_slurm_options()
def run_stage2(
    target: Annotated[str, typer.Option(help="The low-resource target task.")],
    settings: dict[str, Any],
    request: so.SlurmRequest,
    sources: Annotated[str, typer.Option(help="Source tasks, comma-separated.")] = "",
    tpv: Annotated[
        list[str] | None, typer.Option("--tpv", help="Use these stage-1 runs (repeatable).")
    ] = None,
    task_file: TaskFile = None,
    runs_dir: RunsDir = None,
    detach: Annotated[bool, typer.Option("--detach")] = False,
) -> None:
    """Tune the target with a transfer method over the finished stage-1 runs of the sources."""
    task_registry.use_file(task_file)
    root = runs_root(runs_dir)
    settings = _resolve_paths(settings)
    method = settings.pop("method")
    config = configs.stage2_config(
        target,
        [s.strip() for s in sources.split(",") if s.strip()],
        method,
        root,
        tpv_runs=tpv,
        **settings,
    )
    _check_data(target, config)
    bank.check_init(root, configs.init_id(config["model"], config["prompt_length"], config["init_seed"]))
    if request.executor != "slurm":  # a Slurm job converts the model in its node's cache
        check_cache(config["model"])
    for line in configs.describe_stage1_runs(root, config):  # which T_t; on stderr: --detach prints the id
        typer.echo(line, err=True)
    label = f"{target}-{method_registry.run_label(method)}"
    _start([create_run(root, "stage2", label, config)], detach, 1, request.resources())


@run_app.command("pipeline")
@so.with_slurm_options()
def run_pipeline(
    experiment: Annotated[Path, typer.Argument(help="An experiment TOML file.")],
    request: so.SlurmRequest,
    runs_dir: RunsDir = None,
    jobs: Annotated[str | None, typer.Option(help=JOBS_HELP + " Overrides the file.")] = None,
    data_dir: DataDir = None,
    task_file: TaskFile = None,
) -> None:
    """Stage 1 for every task needed (reusing finished runs), then stage 2 for target × method × seed.

    Exits 1 unless every run of the study completed. On Slurm each stage is one job array and the rest
    of the pipeline a job that waits for it: the command returns once the first stage is submitted.
    """
    from dtvg_engine.studies.pipeline import results_paths, run_pipeline, unfinished_line
    from dtvg_engine.studies.studyfile import load_experiment
    from dtvg_engine.studies.studyprocess import forget_study, record_path

    if jobs is not None:
        jobs = configs.parse_jobs("--jobs", jobs)
    task_registry.use_file(task_file)
    root = runs_root(runs_dir)
    data = str(data_dir.resolve()) if data_dir else None
    on_slurm, first_time = None, False
    if request.executor == "slurm":
        spec = load_experiment(experiment)
        base = so.Resources.from_table(spec.slurm, str(experiment)) if spec.slurm else None
        on_slurm = so.submitter().PipelineOnSlurm(
            experiment.resolve(), root.resolve(), request.resources(base), jobs, data
        )
        first_time = not record_path(root, spec.name).exists()
    try:
        outcome = run_pipeline(experiment, root, jobs, data, on_slurm=on_slurm)
    except UserError:
        if first_time:  # sbatch refused its first jobs: the study leaves no trace
            forget_study(root, spec.name)
        raise
    for line in outcome.report:
        out.print(line, markup=False, highlight=False)
    if outcome.table is None:  # submitted: the last pipeline job writes the results
        print(f"results, once every job has ended: {results_paths(root, outcome.name)[0]}")
        return
    out.print(outcome.table.markdown, markup=False, highlight=False)
    md, js = results_paths(root, outcome.name)
    print(f"results: {md} and {js}")
    unfinished = unfinished_line(outcome)
    if unfinished:
        print(unfinished)
        raise typer.Exit(1)


def demo(
    runs_dir: RunsDir = None,
    jobs: Annotated[str, typer.Option(help=JOBS_HELP)] = "auto",
) -> None:
    """A complete small experiment on the bundled model and data: 6 bank sources, target sst2, pt vs dtvg."""
    from importlib.resources import files

    from dtvg_engine.studies.studyfile import load_experiment
    from dtvg_engine.train.data import BUNDLED_DATA_DIR

    experiment = Path(str(files("dtvg_engine") / "experiments" / "demo.toml"))
    run_pipeline(experiment=experiment, runs_dir=runs_dir, jobs=jobs, data_dir=BUNDLED_DATA_DIR)
    out.print(demo_caveat(load_experiment(experiment)), markup=False, highlight=False)
    out.print(
        "open the dashboard to look at the runs: dtvg-tui" + (f" --runs-dir {runs_dir}" if runs_dir else "")
    )


def demo_caveat(spec: StudySpec) -> str:
    """How far the demo's scores can be read: the first result a new user sees must not pass for a
    verdict on the method."""
    rows, steps, seeds = spec.stage2["max_eval"], spec.stage2["steps"], len(spec.seeds)
    error = 100 * math.sqrt(0.75 * 0.25 / rows)
    return (
        f"These scores show the mechanics, not which method is better: {seeds} seed, {steps} steps, "
        f"{rows} test rows. One row moves a score {100 / rows:.1f} points and the standard error of a score "
        f"near 75 % is {error:.1f} points, so a difference of a few points between pt and dtvg here is "
        "noise. The comparison, over several seeds and more rows, is the transfer study in "
        "docs/results.md (the repository's), where sst2 is one of the targets the sources helped."
    )


@run_app.command("resume")
@so.with_slurm_options(executor=False)
def run_resume(
    run: Annotated[str, typer.Argument(help="Run id (or a unique part of it).")],
    request: so.SlurmRequest,
    runs_dir: RunsDir = None,
    detach: Annotated[bool, typer.Option("--detach")] = False,
) -> None:
    """Continue a stopped, killed or failed run from its last checkpoint, or start a queued one.

    A run that ran on Slurm is submitted again, with the resources it asked for but those the
    `--slurm-*` options change (more time for a run that keeps reaching its limit).
    """
    run_dir = find_run(runs_root(runs_dir), run)
    if slurm.read_job(run_dir) is not None:
        job_id = so.submitter().resubmit(run_dir, request.changes)
        print(f"{run_dir.name}: Slurm job {job_id}")
        return
    if any(request.changes.values()):
        raise UserError(f"run {run_dir.name} ran on this machine: --slurm-* options are for Slurm runs")
    check_action(run_dir, "resume")
    configs.check_run_config(read_config(run_dir), run_dir / CONFIG)  # edited since it was made?
    checkpoint_path(run_dir)  # a damaged or unsafe checkpoint is refused before anything starts
    _start([run_dir], detach, 1)
