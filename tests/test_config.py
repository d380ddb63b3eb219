"""Config checks in the dataclasses (`bert_core.config`) and the CLI's one-line errors.

Before, a wrong type or value surfaced deep inside a stage as a 15-49 line traceback, or not at all: a string
`max_train_steps` crashed the loop, -5 wrote a random-init final/ and died with StopIteration, `"sources": "corpus"`
was iterated by character (one starting with "/" walked the file system).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from bert_core import stage
from bert_core.config import ConfigError
from bert_core.downstream.classification import FinetuneConfig
from bert_core.downstream.qa import QaConfig
from bert_core.examples.generation import ExamplesConfig
from bert_core.examples.masking import MaskingConfig
from bert_core.examples.tokenizer import TokenizerConfig
from bert_core.ingest.corpus import IngestConfig
from bert_core.ingest.dedup import DedupConfig
from bert_core.training.pretrain import PretrainConfig
from tests.conftest import REPO

PRETRAIN = {"shards_dir": "x", "output_dir": "y"}
FINETUNE = {"model_name_or_path": "m", "train_file": "t", "validation_file": "v", "output_dir": "o"}

BAD = [
    (PretrainConfig, {**PRETRAIN, "max_train_steps": "60"}, "PretrainConfig.max_train_steps is '60' (str); expected an integer"),
    (PretrainConfig, {**PRETRAIN, "learning_rate": "fast"}, "PretrainConfig.learning_rate is 'fast' (str); expected a number"),
    (PretrainConfig, {**PRETRAIN, "per_device_train_batch_size": 3.5}, "per_device_train_batch_size is 3.5 (float)"),
    (PretrainConfig, {**PRETRAIN, "per_device_train_batch_size": 0}, "per_device_train_batch_size is 0; expected a value > 0"),
    (PretrainConfig, {**PRETRAIN, "max_train_steps": -5}, "PretrainConfig.max_train_steps is -5; expected a value > 0"),
    (PretrainConfig, {**PRETRAIN, "mixed_precision": "fp8"}, "mixed_precision is 'fp8'; expected one of 'auto', 'no', 'bf16', 'fp16'"),
    (PretrainConfig, {**PRETRAIN, "optimizer": "sgd"}, "PretrainConfig.optimizer is 'sgd'; expected one of 'adamw', 'lamb'"),
    (PretrainConfig, {**PRETRAIN, "init_from": 3}, "PretrainConfig.init_from is 3 (int); expected a string or null"),
    (PretrainConfig, {**PRETRAIN, "adam_beta2": 1.0}, "adam_beta2 is 1.0; expected a value >= 0 and < 1"),
    (PretrainConfig, {**PRETRAIN, "length_binning": "yes"}, "length_binning is 'yes' (str); expected true or false"),
    (PretrainConfig, {"output_dir": "y"}, "PretrainConfig option(s) ['shards_dir'] missing"),
    (PretrainConfig, {**PRETRAIN, "lerning_rate": 1}, "unknown PretrainConfig option(s) ['lerning_rate']"),
    (ExamplesConfig, {"tokenizer": [1, 2]}, "ExamplesConfig.tokenizer is (1, 2) (tuple); expected an object of TokenizerConfig"),
    (ExamplesConfig, {"max_seq_length": 4}, "ExamplesConfig.max_seq_length is 4; expected a value >= 8"),
    (ExamplesConfig, {"short_seq_prob": 1.5}, "ExamplesConfig.short_seq_prob is 1.5; expected a value >= 0 and <= 1"),
    (ExamplesConfig, {"masking": "random"}, "ExamplesConfig.masking is 'random'; expected one of 'static', 'dynamic'"),
    (ExamplesConfig, {"mlm": {"mlm_probability": 0}}, "MaskingConfig.mlm_probability is 0.0; expected a value > 0"),
    (ExamplesConfig, {"tokenizer": {"vocab_size": 3}}, "TokenizerConfig.vocab_size is 3; expected a value >= 6"),
    (IngestConfig, {"sources": "corpus"}, "IngestConfig.sources is 'corpus' (str), a single string where a list is expected"),
    (IngestConfig, {"sources": "/"}, "IngestConfig.sources is '/' (str), a single string where a list is expected"),
    (IngestConfig, {"sources": []}, "IngestConfig.sources is empty"),
    (IngestConfig, {"validation_fraction": 1.0}, "IngestConfig.validation_fraction is 1.0; expected a value >= 0 and < 1"),
    (IngestConfig, {"cleaning": {"min_alpha_fraction": 2}}, "CleaningConfig.min_alpha_fraction is 2.0; expected a value >= 0 and <= 1"),
    (IngestConfig, {"cleaning": {"sentence_splitter": "nltk"}}, "CleaningConfig.sentence_splitter is 'nltk'"),
    (IngestConfig, {"dedup": {"near_dedup_threshold": 0}}, "DedupConfig.near_dedup_threshold is 0.0; expected a value > 0"),
    (IngestConfig, {"read": {"text_document_boundary": "page"}}, "ReadConfig.text_document_boundary is 'page'"),
    (FinetuneConfig, {**FINETUNE, "label_names": "positive"}, "FinetuneConfig.label_names is 'positive' (str)"),
    (FinetuneConfig, {**FINETUNE, "num_train_epochs": 0}, "FinetuneConfig.num_train_epochs is 0; expected a value > 0"),
    (FinetuneConfig, {**FINETUNE, "warmup_ratio": -0.1}, "FinetuneConfig.warmup_ratio is -0.1; expected a value >= 0"),
    (FinetuneConfig, {**FINETUNE, "truncation": "middle"}, "FinetuneConfig.truncation is 'middle'"),
    (QaConfig, {**FINETUNE, "doc_stride": 0}, "QaConfig.doc_stride is 0"),
]


@pytest.mark.parametrize("cls,values,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_a_bad_config_value_is_one_clear_error(cls, values, message):
    with pytest.raises(ConfigError) as error:
        stage.config_from_dict(cls, values)
    assert message in str(error.value)


def test_good_values_pass_and_json_types_are_normalised():
    config = stage.config_from_dict(PretrainConfig, {**PRETRAIN, "learning_rate": 1, "mlm": {"mlm_probability": 0.2}})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert stage.config_from_dict(IngestConfig, {"sources": ["a", "b"]}).sources == ("a", "b")
    assert FinetuneConfig(**FINETUNE, label_names=["a", "b", "c"]).label_names == ("a", "b", "c")
    # The defaults of every config pass their own checks.
    for cls in (IngestConfig, ExamplesConfig, MaskingConfig, DedupConfig, TokenizerConfig):
        cls()


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bert_core", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_the_cli_prints_one_line_and_exits_2_and_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PRETRAIN, "max_train_steps": "60"}))
    line = _one_line_error(_cli("pretrain", "--config", config))
    assert f"error: {config}: PretrainConfig.max_train_steps is '60' (str); expected an integer" in line
    debug = _cli("--log-level", "DEBUG", "pretrain", "--config", config)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr

    config.write_text('{"sources": ["corpus"],')
    assert f"{config}: not valid JSON" in _one_line_error(_cli("ingest", "--config", config, "--output-dir", tmp_path))
    assert "config file" in _one_line_error(_cli("ingest", "--config", tmp_path / "nope.json", "--output-dir", tmp_path))


def test_a_missing_init_from_or_model_path_is_one_line_naming_it(tmp_path, examples_dir):
    config = tmp_path / "pretrain.json"
    config.write_text(json.dumps({"shards_dir": str(examples_dir), "output_dir": str(tmp_path / "out"),
                                  "max_seq_length": 64, "init_from": str(tmp_path / "phase1" / "final")}))
    line = _one_line_error(_cli("pretrain", "--config", config))
    assert f"model '{tmp_path / 'phase1' / 'final'}': no such directory, models:/ URI or package" in line
    assert "models:/name@alias" in line
    assert not (tmp_path / "out" / "final").exists()  # nothing written before the error

    finetune = tmp_path / "finetune.json"
    finetune.write_text(json.dumps({**FINETUNE, "model_name_or_path": "./x"}))
    line = _one_line_error(_cli("finetune", "--config", finetune, cwd=tmp_path))
    assert "model './x': no such directory, models:/ URI or package; expected a model directory" in line


def test_finetuning_from_a_model_directory_without_a_tokenizer_is_refused(pretrained, tmp_path):
    """It used to succeed with a 5-token vocabulary: every input [UNK], dev accuracy 49%."""
    import shutil

    from bert_core.downstream.classification import finetune
    from bert_core.ingest.sources import SAMPLE_DIR

    bare = tmp_path / "bare"
    shutil.copytree(pretrained["final_dir"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    config = FinetuneConfig(model_name_or_path=str(bare), train_file=str(SAMPLE_DIR / "sst2" / "train.tsv"),
                            validation_file=str(SAMPLE_DIR / "sst2" / "dev.tsv"), output_dir=str(tmp_path / "ft"),
                            max_train_steps=2)
    with pytest.raises(FileNotFoundError, match="has no tokenizer .tokenizer.json or vocab.txt.; without one every "
                                                "input would be \\[UNK\\]"):
        finetune(config)


def test_stage_help_lists_the_configs_fields_from_the_dataclass():
    """`python -m bert_core STAGE --help`: what the stage does, then every field (nested ones dotted) with what it
    takes, its default, its choices or bounds and its comment in the dataclass."""
    out = _cli("suite", "--help")
    assert out.returncode == 0, out.stderr
    assert "random-init twin" in out.stdout
    assert "  size\n      one of 'tiny', 'default', 'full'; default 'default'." in out.stdout
    assert "  max_seq_length\n      an integer >= 8; default 128. tokens per fine-tuning example" in out.stdout
    examples = _cli("examples", "--help").stdout
    assert "  tokenizer.vocab_size\n      an integer >= 6; default 30522. WordPiece vocabulary size" in examples
    assert "  mlm.mlm_probability\n      a number > 0 and <= 1; default 0.15." in examples
    fields = {line.strip() for line in _cli("pretrain", "--help").stdout.splitlines() if line.startswith("  ") and
              not line.startswith("   ")}
    assert {f.name for f in dataclasses.fields(PretrainConfig) if f.name != "mlm"} <= fields


def test_set_gives_fields_over_the_config_file_with_the_same_checks(tmp_path):
    from bert_core.__main__ import _config, build_parser

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"max_seq_length": 64, "tokenizer": {"vocab_size": 4000}}))
    args = build_parser().parse_args(["examples", "--config", str(config), "--documents-dir", "d", "--output-dir", "o",
                                      "--set", "tokenizer.lowercase=false", "--set", "masking=dynamic",
                                      "--set", "max_seq_length=128"])
    built = _config(ExamplesConfig, args)
    assert (built.max_seq_length, built.masking, built.tokenizer.vocab_size, built.tokenizer.lowercase) == \
        (128, "dynamic", 4000, False)
    line = _one_line_error(_cli("pretrain", "--set", "shards_dir=x", "--set", "output_dir=y",
                                "--set", "max_train_steps=0"))
    assert "PretrainConfig.max_train_steps is 0; expected a value > 0" in line
    assert "unknown PretrainConfig option(s) ['lerning_rate']" in _one_line_error(
        _cli("pretrain", "--set", "shards_dir=x", "--set", "output_dir=y", "--set", "lerning_rate=1"))
    assert "expected NAME=VALUE" in _one_line_error(_cli("pretrain", "--set", "learning_rate"))
