"""Token classification on CoNLL-format files. The CoNLL-2003 text (Reuters) cannot ship in this repository, so
the files here are written for the test in the same format; the real data is measured in the README."""

import pytest

from bert_core.downstream.ner import NerConfig, encode_words, entity_metrics, finetune_ner, predict_tags, read_conll

SENTENCES = [
    ("Alice Smith works for Acme Corp in Paris .", "B-PER I-PER O O B-ORG I-ORG O B-LOC O"),
    ("Bob visited London on Monday .", "B-PER O B-LOC O O O"),
    ("The Bank of England raised rates .", "O B-ORG I-ORG I-ORG O O O"),
    ("Carol Jones flew to Berlin and Rome .", "B-PER I-PER O O B-LOC O B-LOC O"),
    ("Dave joined Globex in Madrid .", "B-PER O B-ORG O B-LOC O"),
    ("Eve met Frank in Tokyo .", "B-PER O B-PER O B-LOC O"),
]


def write_conll(path, sentences, repeat=1):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(repeat):
        for text, tags in sentences:
            lines += [f"{w} NNP B-NP {t}" for w, t in zip(text.split(), tags.split())] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_conll_skips_docstart_and_keeps_the_last_column(tmp_path):
    data = read_conll(write_conll(tmp_path / "a.txt", SENTENCES))
    assert len(data) == 6 and data[0][0][:2] == ["Alice", "Smith"] and data[0][1][:2] == ["B-PER", "I-PER"]
    (tmp_path / "bad.txt").write_text("lonely\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_conll(tmp_path / "bad.txt")


def test_labels_go_to_the_first_piece_of_each_word(pretrained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    words = ["Globexification", "met", "Eve"]
    (row,) = encode_words(tokenizer, [words], [[3, 0, 1]], max_seq_length=32)
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces[0] == "[CLS]" and row["labels"][0] == -100 and row["labels"][-1] == -100
    assert pieces[2].startswith("##")  # the long word is several pieces: only its first carries the label
    labelled = [label for label in row["labels"] if label != -100]
    assert labelled == [3, 0, 1]


def test_entity_f1_uses_exact_spans():
    truth = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert entity_metrics(truth, truth)["f1"] == 1.0
    half = entity_metrics(truth, [["B-PER", "O", "O", "B-LOC"]])  # PER span cut short: wrong entity
    assert half["precision"] == 0.5 and half["recall"] == 0.5 and half["per_type_f1"]["LOC"] == 1.0


def test_ner_finetuning_learns_and_keeps_the_best_model(pretrained, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    train = write_conll(tmp_path / "train.txt", SENTENCES, repeat=20)
    dev = write_conll(tmp_path / "dev.txt", SENTENCES)
    summary = finetune_ner(NerConfig(model_name_or_path=pretrained["final_dir"], train_file=str(train),
                                     validation_file=str(dev), output_dir=str(tmp_path / "ner"), max_seq_length=32,
                                     per_device_train_batch_size=8, learning_rate=3e-3, max_train_steps=60,
                                     eval_steps=20))
    assert summary["eval_f1"] > 0.5 and summary["eval_num_sentences"] == 6  # memorises its own training data
    model = AutoModelForTokenClassification.from_pretrained(summary["final_dir"])
    tags = predict_tags(model, AutoTokenizer.from_pretrained(summary["final_dir"]), [s.split() for s, _ in SENTENCES],
                        max_seq_length=32)
    assert entity_metrics([t.split() for _, t in SENTENCES], tags)["f1"] == summary["eval_f1"]
    with pytest.raises(ValueError, match="not in label_names"):
        finetune_ner(NerConfig(model_name_or_path=pretrained["final_dir"], train_file=str(train),
                               validation_file=str(dev), output_dir=str(tmp_path / "x"), label_names=("O", "B-PER")))
