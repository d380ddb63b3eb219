"""Extractive QA: SQuAD reading, doc-stride windows, answer post-processing, the official EM/F1, fine-tuning."""

import gzip
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from bert_core.downstream.qa import (QaConfig, answer_questions, finetune_qa, locate_answer, normalize_answer,
    split_squad_by_article, squad_metrics, training_features)
from bert_core.ingest.textfiles import read_squad
from tests.conftest import REPO

SQUAD = REPO / "bert_core" / "sample_data" / "squad"


def test_read_squad_json_and_jsonl_rows_agree(tmp_path):
    questions = read_squad(SQUAD / "dev.json.gz")
    assert len(questions) == 108 and len(read_squad(SQUAD / "train.json.gz")) == 432
    assert all(q.context[s : s + len(a)] == a for q in questions for a, s in zip(q.answers, q.answer_starts))
    # The same questions as Hugging Face datasets writes SQuAD to JSON lines.
    rows = [{"id": q.id, "title": q.title, "context": q.context, "question": q.question,
             "answers": {"text": list(q.answers), "answer_start": list(q.answer_starts)}} for q in questions]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_squad(tmp_path / "dev.jsonl") == questions
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_squad(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text(json.dumps({**rows[0], "id": "e1", "context": " "}) + "\n")
    with pytest.raises(ValueError, match="empty context, e.g. id 'e1'"):
        read_squad(tmp_path / "empty.jsonl")


def test_split_by_article_keeps_articles_whole(tmp_path):
    source = tmp_path / "squad.json"
    source.write_bytes(gzip.decompress((SQUAD / "train.json.gz").read_bytes()))
    counts = split_squad_by_article(source, tmp_path / "a.json", tmp_path / "b.json", eval_articles=1, seed=3)
    a, b = read_squad(tmp_path / "a.json"), read_squad(tmp_path / "b.json")
    assert counts == {"train": len(a), "eval": len(b)} and len(a) + len(b) == 432
    assert len({q.title for q in b}) == 1 and not {q.title for q in a} & {q.title for q in b}
    assert not {q.context for q in a} & {q.context for q in b}


def test_official_squad_normalisation_and_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    q = SimpleNamespace(id="1", answers=("red dog", "the crimson hound"))
    scores = squad_metrics([q], {"1": "big red dog"})  # P 2/3, R 1 against the first answer
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(80.0)
    assert squad_metrics([q], {"1": "The red dog."})["exact_match"] == 100.0
    assert squad_metrics([q], {})["f1"] == 0.0


def test_answer_start_that_misses_its_text_is_searched_or_rejected(pretrained):
    from transformers import AutoTokenizer

    base = read_squad(SQUAD / "dev.json.gz")[0]
    moved = SimpleNamespace(**{**base.__dict__, "answer_starts": (base.answer_starts[0] + 7,)})
    assert locate_answer(moved) == (base.answer_starts[0], base.answer_starts[0] + len(base.answers[0]))
    missing = SimpleNamespace(**{**base.__dict__, "answers": ("no such words in the text",)})
    assert locate_answer(missing) is None
    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    config = QaConfig(model_name_or_path="-", train_file="-", validation_file="-", output_dir="-",
                      max_seq_length=128, doc_stride=32)
    rows, counts = training_features(tokenizer, [base, missing, moved], config)
    assert counts["questions"] == 3 and counts["rejected_answer_not_in_context"] == 1
    assert counts["windows"] == len(rows) > 2


class OracleQa(torch.nn.Module):
    """A stand-in QA model whose logits point at the gold span of each window (known by its token ids)."""

    def __init__(self, gold: dict[tuple, tuple[int, int]]):
        super().__init__()
        self.gold = gold

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        start = torch.full(input_ids.shape, -5.0)
        end = torch.full(input_ids.shape, -5.0)
        for row, ids in enumerate(input_ids.tolist()):
            span = self.gold.get(tuple(i for i in ids if i != 0))
            if span and span != (0, 0):
                start[row, span[0]], end[row, span[1]] = 10.0, 10.0
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_windows_and_post_processing_recover_every_gold_answer(pretrained):
    """Labels -> windows -> logits -> spans -> text: an oracle on the gold positions scores EM 100 over windows of
    128 tokens with a stride of 32, so long contexts are cut into several overlapping windows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    questions = read_squad(SQUAD / "dev.json.gz")
    config = QaConfig(model_name_or_path="-", train_file="-", validation_file="-", output_dir="-",
                      max_seq_length=128, doc_stride=32)
    rows, counts = training_features(tokenizer, questions, config)
    assert counts["windows"] > 1.5 * len(questions) and counts["windows_without_answer"] > 0
    for row in rows:
        if row["start_positions"]:
            assert row["token_type_ids"][row["start_positions"]] == 1 and row["end_positions"] >= row["start_positions"]
    gold = {tuple(r["input_ids"]): (r["start_positions"], r["end_positions"]) for r in rows}
    answers = answer_questions(OracleQa(gold), tokenizer, [q.question for q in questions],
                               [q.context for q in questions], max_seq_length=128, doc_stride=32, batch_size=16)
    assert all(a["answer"] == q.context[a["start"] : a["start"] + len(a["answer"])] for q, a in zip(questions, answers))
    scores = squad_metrics(questions, {q.id: a["answer"] for q, a in zip(questions, answers)})
    assert scores["exact_match"] == 100.0 and scores["num_questions"] == 108
    # A model with no preference gives some answer inside the context, never text from the question.
    flat = answer_questions(OracleQa({}), tokenizer, [questions[0].question, "who?"], [questions[0].context, ""])
    assert flat[0]["answer"] in questions[0].context
    assert flat[1]["answer"] == "" and flat[1]["start"] == -1  # an empty context has no answer


def test_qa_finetuning_trains_scores_and_reloads(pretrained, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    config = QaConfig(model_name_or_path=pretrained["final_dir"], train_file=str(SQUAD / "train.json.gz"),
                      validation_file=str(SQUAD / "dev.json.gz"), output_dir=str(tmp_path / "qa"),
                      max_seq_length=128, doc_stride=48, max_train_steps=12, per_device_train_batch_size=16,
                      learning_rate=1e-3, eval_steps=6)
    summary = finetune_qa(config)
    assert summary["steps"] == 12 and summary["train"]["questions"] == 432
    assert summary["train"]["rejected_answer_not_in_context"] == 0
    assert 0.0 <= summary["eval_exact_match"] <= summary["eval_f1"] <= 100.0 and summary["eval_num_questions"] == 108
    records = [json.loads(line) for line in (tmp_path / "qa" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 12] and all("eval_f1" in r for r in records)
    model = AutoModelForQuestionAnswering.from_pretrained(summary["final_dir"])
    assert model.config.architectures == ["BertForQuestionAnswering"]
    assert finetune_qa(config) == summary  # a rerun with the same inputs is skipped

    # The CLI answers from the saved model.
    out = subprocess.run([sys.executable, "-m", "bert_core", "predict", "--model", summary["final_dir"], "--task", "qa",
                          "--text", "Who ruled Normandy?", "--pair", "Normandy was ruled by Rollo the Viking."],
                         capture_output=True, text=True, check=True, cwd=REPO)
    (result,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert result["answer"] and result["answer"] in "Normandy was ruled by Rollo the Viking."
    assert 0.0 < result["probability"] <= 1.0
