"""Generation tasks (WebNLG, CommonGen, E2E): their splits, bad input, BLEU/ROUGE, teacher forcing, greedy
decoding, predictions.jsonl, and stage 1 and stage 2 end to end on the tiny models and real data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from dtvg_engine import config as configs
from dtvg_engine.errors import UserError
from dtvg_engine.method import method_registry
from dtvg_engine.runs.events import Eval, EventWriter, Group, read_events
from dtvg_engine.runs.runfolder import create_run
from dtvg_engine.runs.runstatus import summarize
from dtvg_engine.train import metrics, tasks
from dtvg_engine.train.backbones import load_backbone
from dtvg_engine.train.data import REFERENCES, load_splits
from dtvg_engine.train.generation import GENERATION_TOKENS_CAP, PREDICTIONS, TextGenerator, fitted_scorer
from dtvg_engine.train.training import SoftPrompt, fit, predictions
from dtvg_engine.worker import run_worker

DTVG = str(Path(sys.executable).with_name("dtvg"))
TINY = {
    "model": "tiny-llama", "prompt_length": 4, "k_shot": 8, "max_eval": 4, "eval_every": 2,
    "max_target_tokens": 8,  # a random model rarely writes end of sequence: decode 8 tokens, not 128
}  # fmt: skip


def rows_of(file: Path) -> list[dict]:
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]


# --- splits -----------------------------------------------------------------------------------------


def test_web_nlg_uses_its_test_file_and_scores_against_every_reference(data_dir: Path) -> None:
    splits = load_splits("web_nlg", data_dir, seed=0, k_shot=8, max_eval=20)
    assert splits.split_info["sizes"] == {"train": 8, "validation": 20, "test": 20}
    assert splits.split_info["files"]["test"].endswith("web_nlg/test.jsonl")
    test_ids = {row["webnlg_id"] for row in rows_of(data_dir / "web_nlg" / "test.jsonl")}
    assert all(row["webnlg_id"] in test_ids for row in splits.test)
    assert all(row[REFERENCES] == [text.strip() for text in row["references"]] for row in splits.test)
    assert any(len(row[REFERENCES]) > 1 for row in splits.test)
    again = load_splits("web_nlg", data_dir, seed=0, k_shot=8, max_eval=20)
    assert again.train == splits.train  # seeded
    assert load_splits("web_nlg", data_dir, seed=1, k_shot=8, max_eval=20).train != splits.train


def test_common_gen_evaluates_each_concept_set_once_with_all_its_sentences(data_dir: Path) -> None:
    splits = load_splits("common_gen", data_dir, seed=0, max_eval=30)
    by_set = defaultdict(list)
    for row in rows_of(data_dir / "common_gen" / "test.jsonl"):
        by_set[row["concept_set_idx"]].append(row["target"].strip())
    assert len(splits.test) == 30
    assert len({row["concept_set_idx"] for row in splits.test}) == 30
    assert all(row[REFERENCES] == by_set[row["concept_set_idx"]] for row in splits.test)
    full = load_splits("common_gen", data_dir, seed=0)
    assert len(full.test) == len(by_set) == 1497  # the old public test's concept sets


@pytest.mark.parametrize("task", ["e2e_nlg_cleaned", "e2e_nlg"])
def test_e2e_takes_its_shots_from_validation_by_whole_meaning_representation(
    task: str, data_dir: Path
) -> None:
    splits = load_splits(task, data_dir, seed=3, k_shot=20)
    assert len(splits.train) == 20
    train_mrs = {row["meaning_representation"] for row in splits.train}
    validation_mrs = {row["meaning_representation"] for row in splits.validation}
    assert not train_mrs & validation_mrs
    file_mrs = {
        row["meaning_representation"]
        for row in rows_of(data_dir / f"_validation_only/{task}/validation.jsonl")
    }
    assert train_mrs | validation_mrs == file_mrs  # every input of the file is used, once
    assert splits.split_info["files"]["test"].endswith(f"{task}/test.jsonl")
    assert "validation file" in splits.split_info["rule"]
    assert len({row["meaning_representation"] for row in splits.test}) == len(splits.test)
    assert load_splits(task, data_dir, seed=4, k_shot=20).train != splits.train


def test_e2e_without_shots_trains_on_half_its_inputs_and_refuses_too_many_shots(data_dir: Path) -> None:
    file_rows = rows_of(data_dir / "_validation_only/e2e_nlg/validation.jsonl")
    inputs = {row["meaning_representation"] for row in file_rows}
    splits = load_splits("e2e_nlg", data_dir, seed=0)
    assert len({row["meaning_representation"] for row in splits.train}) == len(inputs) // 2
    assert len(splits.train) + sum(len(row[REFERENCES]) for row in splits.validation) == len(file_rows)
    with pytest.raises(UserError, match="some inputs must stay for validation; use a smaller --k-shot"):
        load_splits("e2e_nlg", data_dir, k_shot=len(file_rows) - 1)


BAD_ROWS = [
    ({"input": ["A | b | C"], "target": "", "references": ["x"]}, "target"),
    ({"input": "A | b | C", "target": "A b C.", "references": ["x"]}, "input"),
    ({"input": ["A | b | C"], "target": "A b C.", "references": []}, "references"),
    ({"input": ["A | b | C"], "target": "A b C."}, "references"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_ROWS)
def test_a_bad_generation_row_is_named_by_file_row_and_field(tmp_path: Path, bad: dict, field: str) -> None:
    good = {"input": ["A | b | C"], "target": "A b C.", "references": ["A b C."]}
    folder = tmp_path / "web_nlg"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        rows = [good, good, bad] if split == "validation" else [good, good]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UserError) as info:
        load_splits("web_nlg", tmp_path)
    message = str(info.value)
    assert "validation.jsonl: row 3" in message and repr(field) in message and "\n" not in message


def test_cli_refuses_a_bad_generation_file_with_one_line_and_no_run(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "common_gen"
    folder.mkdir(parents=True)
    good = {"concept_set_idx": 0, "concepts": ["dog", "run"], "target": "A dog runs."}
    for split in ("train", "validation", "test"):
        bad = {**good, "concepts": "dog run"} if split == "test" else good
        (folder / f"{split}.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    runs = tmp_path / "runs"
    result = subprocess.run(
        [DTVG, "run", "stage1", "common_gen", "--model", "tiny-llama", "--runs-dir", runs,
         "--data-dir", tmp_path / "data", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "test.jsonl: row 2" in result.stderr and "'concepts'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(("_", "."))]


def test_cli_refuses_a_generation_length_for_a_classification_task(runs_dir: Path, data_dir: Path) -> None:
    result = subprocess.run(
        [DTVG, "run", "stage1", "rte", "--model", "tiny-llama", "--max-target-tokens", "8",
         "--runs-dir", runs_dir, "--data-dir", data_dir, "--device", "cpu"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "max_target_tokens applies to generation tasks only; 'rte'" in result.stderr
    assert "Traceback" not in result.stderr and not list(runs_dir.iterdir())


def test_a_run_decodes_as_long_as_its_max_target_tokens(llama, data_dir: Path) -> None:
    """The setting reaches the generator; a run made before it existed decodes up to the 128-token cap."""
    task, rows = tasks.get_task("common_gen"), []
    config = configs.stage1_config("common_gen", model="tiny-llama", max_target_tokens=8)
    assert fitted_scorer(llama, task, configs.read_settings(config), rows).max_target_tokens == 8
    del config["max_target_tokens"]
    settings = configs.read_settings(config)
    assert fitted_scorer(llama, task, settings, rows).max_target_tokens == GENERATION_TOKENS_CAP == 128
    with pytest.raises(UserError, match="generation tasks only"):
        configs.stage2_config("rte", [], "pt", data_dir, max_target_tokens=8)


# --- metrics ----------------------------------------------------------------------------------------


def test_text_metrics_are_sacrebleu_and_rouge_score_as_fractions() -> None:
    preds = ["the cat sat on the mat today", "a dog barks at the moon", "nothing in common"]
    refs = [["the cat sat on a mat today", "a cat was on the mat"], ["a dog barks at the moon"], ["zz yy"]]
    got = metrics.text_metrics(preds, refs)
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score / 100)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        best = [scorer.score_multi(r, p)[name].fmeasure for p, r in zip(preds, refs, strict=True)]
        assert got[name] == pytest.approx(sum(best) / 3)
    assert 0 < got["bleu"] < 1 and 0 < got["rouge2"] < got["rouge1"] < 1
    perfect = metrics.text_metrics([r[0] for r in refs], refs)
    assert perfect == pytest.approx({"bleu": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    task = tasks.get_task("common_gen")
    assert metrics.score(task, perfect) == pytest.approx(1.0)


def test_rouge_score_needs_no_nltk_download(tmp_path: Path) -> None:
    """Stemming must work with no nltk data at all (an offline machine)."""
    code = (
        "from rouge_score import rouge_scorer;"
        "s = rouge_scorer.RougeScorer(['rouge1', 'rougeL'], use_stemmer=True);"
        "print(s.score_multi(['the cats were running'], 'a cat runs')['rouge1'].fmeasure)"
    )
    env = {"NLTK_DATA": str(tmp_path / "none"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 0  # "cats"/"cat" and "running"/"runs" stem alike


# --- teacher forcing and greedy decoding --------------------------------------------------------------


@pytest.fixture(scope="module")
def web_nlg_rows(data_dir: Path):
    return load_splits("web_nlg", data_dir, seed=0, k_shot=4, max_eval=4)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_loss_is_the_cross_entropy_of_every_target_token_and_eos(model: str, web_nlg_rows, request) -> None:
    backbone = request.getfixturevalue("llama" if model == "tiny-llama" else "t5")
    generator = TextGenerator(backbone, tasks.get_task("web_nlg"), max_target_tokens=24)
    examples = generator.encode(web_nlg_rows.train)
    assert all(ex.target_ids[-1] == backbone.tokenizer.eos_token_id for ex in examples)
    assert all(len(ex.target_ids) <= 24 for ex in examples)
    prompt = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = generator.loss(prompt, generator.collate(examples))
    # the plain way: each example alone, the whole sequence through the model, no cache sharing
    losses, count = [], 0
    for ex in examples:
        target = torch.tensor(ex.target_ids)
        embeds = backbone.embed(torch.tensor([ex.input_ids]))
        with torch.no_grad():
            if backbone.is_seq2seq:
                logits = backbone.model(
                    inputs_embeds=torch.cat([prompt[None], embeds], 1), labels=target[None]
                ).logits[0]
            else:
                sequence = backbone.embed(torch.tensor([ex.input_ids + ex.target_ids]))
                logits = backbone.model(inputs_embeds=torch.cat([prompt[None], sequence], 1)).logits[0]
                start = 4 + len(ex.input_ids) - 1
                logits = logits[start : start + len(target)]
        losses.append(F.cross_entropy(logits, target, reduction="sum"))
        count += len(target)
    torch.testing.assert_close(ours, torch.stack(losses).sum() / count, atol=1e-5, rtol=1e-5)


def generate_alone(backbone, prompt: torch.Tensor, ex, max_new_tokens: int) -> list[int]:
    """The ids transformers' `generate` (greedy) writes for one row alone after the soft prompt (a
    seq2seq model's start with its decoder start token)."""
    embeds = torch.cat([prompt[None], backbone.embed(torch.tensor([ex.input_ids]))], 1)
    eos = backbone.tokenizer.eos_token_id
    with torch.no_grad():
        out = backbone.model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
    return out[0].tolist()


def generated_alone(backbone, prompt: torch.Tensor, ex, max_new_tokens: int) -> str:
    """The text of `generate_alone`."""
    ids = generate_alone(backbone, prompt, ex, max_new_tokens)
    return backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_batched_greedy_decoding_matches_transformers_generate(model: str, web_nlg_rows, request) -> None:
    backbone = request.getfixturevalue("llama" if model == "tiny-llama" else "t5")
    generator = TextGenerator(backbone, tasks.get_task("web_nlg"), max_target_tokens=10)
    examples = generator.encode(web_nlg_rows.validation)
    assert len({len(ex.input_ids) for ex in examples}) > 1  # padding is exercised
    prompt = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 3
    ours = predictions(generator, prompt, examples, batch_size=3)
    for ex, text in zip(examples, ours, strict=True):
        assert text == generated_alone(backbone, prompt, ex, 10)


def count_decoder_rows(backbone) -> tuple[list[int], Callable[[], None]]:
    """The number of rows each call of the backbone's decoder computes, and how to stop counting."""

    def count(_module, _args, kwargs) -> None:
        ids = kwargs.get("inputs_embeds")
        rows.append((ids if ids is not None else kwargs["input_ids"]).shape[0])

    rows: list[int] = []
    return rows, backbone.model.get_decoder().register_forward_pre_hook(count, with_kwargs=True).remove


def test_rows_that_end_leave_the_batch_and_each_still_decodes_as_generate(web_nlg_rows) -> None:
    """A row that has written end of sequence costs no more decoding steps (the model computes fewer
    rows after it), and every row's text is still transformers' `generate` for that row alone. (The
    causal path is checked the same way on the default model, whose tuned prompt ends rows by itself.)"""
    backbone = load_backbone("tiny-t5", "cpu")  # its own copy: its LM head is edited below
    generator = TextGenerator(backbone, tasks.get_task("web_nlg"), max_target_tokens=12)
    examples = generator.encode(web_nlg_rows.validation)
    prompt = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(1)) * 3
    # A random model rarely ends. End of sequence and the token the first row writes first swap their
    # LM-head rows: the rows that would start with that token end at once, the others write on.
    first, eos = generate_alone(backbone, prompt, examples[0], 1)[-1], backbone.tokenizer.eos_token_id
    head = backbone.model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untied: the input embeddings stay
    with torch.no_grad():
        head.weight[[eos, first]] = head.weight[[first, eos]]
    rows_computed, stop_counting = count_decoder_rows(backbone)
    try:
        ours = predictions(generator, prompt, examples, batch_size=len(examples))
    finally:
        stop_counting()
    assert "" in ours and any(ours), f"some rows must end first for this test to mean anything: {ours}"
    assert rows_computed[-1] < len(examples), rows_computed  # the last step computed only unfinished rows
    for ex, text in zip(examples, ours, strict=True):
        assert text == generated_alone(backbone, prompt, ex, 12)


def test_a_training_run_keeps_its_latest_validation_generations(
    tmp_path: Path, llama, data_dir: Path
) -> None:
    """Before its test, predictions.jsonl holds the last evaluation's validation generations."""
    splits = load_splits("common_gen", data_dir, seed=0, k_shot=4, max_eval=3)
    generator = TextGenerator(llama, tasks.get_task("common_gen"), max_target_tokens=6)
    settings = configs.TrainingSettings(steps=6, batch_size=2, eval_every=2)
    checks = iter(range(100))
    stop_at_step_five = lambda: next(checks) == 4  # noqa: E731 - asked before each step
    with EventWriter(tmp_path / "events.jsonl") as events:
        prompt = SoftPrompt(torch.zeros(4, llama.hidden_size))
        outcome = fit(tmp_path, settings, prompt, generator, splits, events, stop_at_step_five)
    assert outcome.status == "stopped" and outcome.step == 4
    records = rows_of(tmp_path / PREDICTIONS)
    assert [(r["split"], r["step"]) for r in records] == [("validation", 4)] * 3
    assert [r["references"] for r in records] == [row[REFERENCES] for row in splits.validation]
    assert [r["input"] for r in records] == [tasks.render(generator.task, row) for row in splits.validation]


# --- runs end to end ----------------------------------------------------------------------------------


def recomputed(path: Path) -> tuple[str, dict[str, float]]:
    """The metrics of a predictions.jsonl, computed straight with sacrebleu and rouge-score."""
    records = rows_of(path)
    preds, refs = [r["prediction"] for r in records], [r["references"] for r in records]
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = [scorer.score_multi(r, p) for p, r in zip(preds, refs, strict=True)]
    values = {"bleu": sacrebleu.corpus_bleu(preds, streams).score / 100}
    values.update(
        {name: sum(row[name].fmeasure for row in rows) / len(rows) for name in ("rouge1", "rouge2", "rougeL")}
    )
    return records[0]["split"], values


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Stage 1 of a generation target and a classification source, on tiny-llama."""
    runs = tmp_path_factory.mktemp("runs")
    for task in ("common_gen", "rte"):
        settings = TINY if task == "common_gen" else {**TINY, "max_target_tokens": None}
        config = configs.stage1_config(task, steps=2, data_dir=str(data_dir), **settings)
        assert run_worker(create_run(runs, "stage1", task, config)) == 0
    return runs


def run_dir_of(runs: Path, task: str) -> Path:
    return next(p for p in runs.iterdir() if p.name.endswith(f"-{task}"))


def test_stage1_generation_run_reports_bleu_rouge_and_keeps_its_predictions(stage1_runs: Path) -> None:
    run_dir = run_dir_of(stage1_runs, "common_gen")
    assert summarize(run_dir).status == "completed"
    events = read_events(run_dir / "events.jsonl")
    evals = [e for e in events if isinstance(e, Eval)]
    assert [e.split for e in evals] == ["validation", "test"]
    test = evals[-1]
    assert set(test.metrics) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert test.primary == pytest.approx(sum(test.metrics.values()) / 4)
    split, values = recomputed(run_dir / PREDICTIONS)
    assert split == "test" and len(rows_of(run_dir / PREDICTIONS)) == 4
    assert values == pytest.approx(test.metrics, abs=1e-12)
    config = json.loads((run_dir / "config.json").read_text())
    assert "test_constant" not in config["split"]  # no constant-answer floor for text
    assert (run_dir / "tpv.safetensors").is_file()


@pytest.mark.parametrize("method", method_registry.NAMES)
def test_every_method_transfers_a_classification_source_to_a_generation_target(
    method: str, stage1_runs: Path, data_dir: Path
) -> None:
    settings = {**TINY, "max_eval": 2}
    config = configs.stage2_config(
        "common_gen", ["rte"], method, stage1_runs, steps=2, data_dir=str(data_dir), **settings
    )
    run_dir = create_run(stage1_runs, "stage2", f"common_gen-{method}", config)
    assert run_worker(run_dir) == 0, (run_dir / "worker.log").read_text()[-2000:]
    assert summarize(run_dir).status == "completed"
    events = read_events(run_dir / "events.jsonl")
    grouped = method_registry.get(method).grouped and method_registry.get(method).group_rule
    assert bool([e for e in events if isinstance(e, Group)]) == bool(grouped)
    test = [e for e in events if isinstance(e, Eval)][-1]
    assert test.split == "test" and set(test.metrics) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert recomputed(run_dir / PREDICTIONS)[1] == pytest.approx(test.metrics, abs=1e-12)


def test_t5_stage1_on_e2e_from_the_command_line(runs_dir: Path, data_dir: Path) -> None:
    """An encoder-decoder backbone on E2E (shots from its validation file), through `dtvg run stage1`."""
    result = subprocess.run(
        [DTVG, "run", "stage1", "e2e_nlg_cleaned", "--model", "tiny-t5", "--prompt-length", "4",
         "--k-shot", "8", "--max-eval", "3", "--steps", "2", "--eval-every", "2", "--device", "cpu",
         "--max-target-tokens", "8",
         "--runs-dir", runs_dir, "--data-dir", data_dir],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = run_dir_of(runs_dir, "e2e_nlg_cleaned")
    test = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Eval)][-1]
    assert test.split == "test" and recomputed(run_dir / PREDICTIONS) == ("test", pytest.approx(test.metrics))
    split = json.loads((run_dir / "config.json").read_text())["split"]
    assert split["sizes"] == {"train": 8, "validation": 3, "test": 3}
    assert "validation file" in split["rule"] and "train" not in split["files"]


def test_runs_compare_json_carries_the_generation_metrics(stage1_runs: Path) -> None:
    first, second = run_dir_of(stage1_runs, "common_gen"), run_dir_of(stage1_runs, "rte")
    result = subprocess.run(
        [DTVG, "runs", "compare", first.name, second.name, "--json", "--runs-dir", stage1_runs],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    by_run = {row["run_id"]: row for row in json.loads(result.stdout)}
    assert set(by_run[first.name]["test"]) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert set(by_run[second.name]["test"]) == {"accuracy"}


@pytest.mark.slow
def test_smollm2_learns_common_gen_and_decodes_as_transformers_does(data_dir: Path) -> None:
    """On the default model: a few teacher-forced steps lower the loss, and batched greedy decoding (left
    padding, the shared prompt cache, rows leaving the batch as they end) writes what `generate` writes
    for each row alone."""
    from dtvg_engine.train.backbones import load_backbone
    from dtvg_engine.train.prompts import sample_init

    backbone = load_backbone("smollm2-135m", "cpu")
    generator = TextGenerator(backbone, tasks.get_task("common_gen"), max_target_tokens=24)
    splits = load_splits("common_gen", data_dir, seed=0, k_shot=32, max_eval=8)
    train = generator.encode(splits.train)
    prompt = torch.nn.Parameter(sample_init(backbone, 8, 0))
    optimizer = torch.optim.AdamW([prompt], lr=0.3)
    losses = []
    for step in range(8):
        loss = generator.loss(prompt, generator.collate(train[4 * (step % 8) : 4 * (step % 8) + 4]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3])
    examples = generator.encode(splits.validation)
    rows_computed, stop_counting = count_decoder_rows(backbone)
    try:
        ours = predictions(generator, prompt.detach(), examples, batch_size=8)
    finally:
        stop_counting()
    assert rows_computed[-1] < len(examples), rows_computed  # rows that had ended were not computed
    eos = backbone.tokenizer.eos_token_id
    same = 0
    for ex, text in zip(examples, ours, strict=True):
        embeds = torch.cat([prompt.detach()[None], backbone.embed(torch.tensor([ex.input_ids]))], 1)
        with torch.no_grad():
            out = backbone.model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos,
            )  # fmt: skip
        same += text == backbone.tokenizer.decode(out[0], skip_special_tokens=True).strip()
    assert same >= len(examples) - 1, ours  # float rounding of padded batches may flip a near tie
    assert any(text for text in ours)


NLG_STUDY = """
name = "tiny-nlg"
model = "tiny-llama"
prompt_length = 4
sources = ["rte"]
targets = ["common_gen"]
methods = ["pt", "dtvg"]
seeds = [0]
[stage1]
steps = 2
max_eval = 4
eval_every = 2
k_shot = 8
[stage2]
steps = 2
max_eval = 4
eval_every = 2
k_shot = 8
max_target_tokens = 8
"""


def test_pipeline_and_report_carry_the_generation_metrics(
    tmp_path: Path, runs_dir: Path, data_dir: Path
) -> None:
    """A study with a generation target: the pipeline's results and `dtvg runs report` (and its JSON)
    score it by the mean of BLEU and ROUGE and list each metric; no constant floor is claimed."""
    experiment = tmp_path / "nlg.toml"
    experiment.write_text(NLG_STUDY)
    common = ["--runs-dir", runs_dir]
    result = subprocess.run(
        [DTVG, "run", "pipeline", experiment, *common, "--data-dir", data_dir],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((runs_dir / "tiny-nlg-results.json").read_text())
    rows = {(r["target"], r["method"]): r for r in results["rows"]}
    assert set(rows) == {("common_gen", "pt"), ("common_gen", "dtvg")}
    assert all(r["metric"] == "mean(bleu,rouge1,rouge2,rougeL)" and r["seeds"] == 1 for r in rows.values())
    assert all(0 <= r["mean"] <= 1 for r in rows.values())
    report = subprocess.run(
        [DTVG, "runs", "report", experiment, *common, "--json-out", tmp_path / "report.json"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    for name in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert f"| common_gen | {name} |" in report.stdout
    document = json.loads((tmp_path / "report.json").read_text())
    assert [r["mean"] for r in document["rows"]] == [r["mean"] for r in results["rows"]]
    for row in document[
        "rows"
    ]:  # each metric too, mean, std and per seed (issue 22); the score is their mean
        assert list(row["metrics"]) == ["bleu", "rouge1", "rouge2", "rougeL"]
        assert all(
            m["seeds"] == 1 and m["std"] == 0.0 and list(m["by_seed"]) == ["0"]
            for m in row["metrics"].values()
        )
        per_seed = [m["by_seed"]["0"] for m in row["metrics"].values()]
        assert row["by_seed"]["0"] == pytest.approx(sum(per_seed) / 4)
        assert all(0 <= value <= 1 for value in per_seed)
    assert document["constant"] == {"common_gen": None}
    made = [json.loads(path.read_text()) for path in runs_dir.glob("*/config.json")]
    lengths = {(c["stage"], c.get("task", c.get("target")), c["max_target_tokens"]) for c in made}
    assert ("stage1", "common_gen", 8) in lengths  # the target's own run writes as long as stage 2
    assert {length for _, task, length in lengths if task == "common_gen"} == {8}
    assert {length for _, task, length in lengths if task == "rte"} <= {None}


def test_the_committed_nlg_results_cover_the_study_and_score_the_mean_of_bleu_and_rouge() -> None:
    """benchmarks/results/nlg.json is the report of experiments/nlg.toml: every target × method on every
    seed, and each seed's score the mean of its BLEU and ROUGE-1/2/L, as docs/results.md reads them."""
    from dtvg_engine.studies.studyfile import load_experiment

    root = Path(__file__).parents[1]
    study = load_experiment(root / "experiments" / "nlg.toml")
    rows = json.loads((root / "benchmarks/results/nlg.json").read_text())["rows"]
    planned = {(target, method) for target in study.targets for method in study.methods}
    assert {(row["target"], row["method"]) for row in rows} == planned
    seeds = {str(seed) for seed in study.seeds}
    for row in rows:
        assert set(row["by_seed"]) == seeds and set(row["metrics"]) == {"bleu", "rouge1", "rouge2", "rougeL"}
        for seed, score in row["by_seed"].items():
            parts = [row["metrics"][name]["by_seed"][seed] for name in ("bleu", "rouge1", "rouge2", "rougeL")]
            assert score == pytest.approx(sum(parts) / 4, abs=1e-12), (row["target"], row["method"], seed)
