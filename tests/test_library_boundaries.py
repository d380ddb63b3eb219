import pkgutil
import subprocess
import sys

import bert_core
from tests.conftest import REPO


def test_bert_core_never_imports_prefect():
    modules = [f"bert_core.{m.name}" for m in pkgutil.iter_modules(bert_core.__path__) if m.name != "__main__"]
    assert len(modules) >= 12
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "assert 'prefect' not in sys.modules, [m for m in sys.modules if m.startswith('prefect')]\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_lists_one_subcommand_per_stage():
    out = subprocess.run([sys.executable, "-m", "bert_core", "--help"], cwd=REPO, capture_output=True, text=True)
    for name in ("ingest", "examples", "pretrain", "finetune", "evaluate", "register"):
        assert name in out.stdout


def test_cli_rejects_unknown_config_keys(tmp_path):
    (tmp_path / "c.json").write_text('{"shards_dir": "x", "output_dir": "y", "lerning_rate": 1}')
    out = subprocess.run([sys.executable, "-m", "bert_core", "pretrain", "--config", str(tmp_path / "c.json")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown PretrainConfig option(s) ['lerning_rate']" in out.stderr
