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


def _bert_core_imports() -> dict[str, set[str]]:
    """bert_core module -> the bert_core modules it imports anywhere (top level or inside functions)."""
    import ast

    package = REPO / "bert_core"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bert_core":
                parts = node.module.split(".")
                deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bert_core.")}
        graph[name] = deps & modules - {name}
    return graph


def test_bert_core_import_graph_is_acyclic():
    """Function-local imports count too: a cycle hidden in a function is still a cycle (evaluate <-> finetune
    was one; their shared metrics now live in bert_core.metrics)."""
    graph = _bert_core_imports()
    assert graph["finetune"] and graph["evaluate"]  # the walk sees imports at all
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(name: str, path: list[str]) -> bool:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle.extend(path[path.index(dep):] + [name, dep] if dep in path else [name, dep])
                return True
            if dep not in state and visit(dep, path + [name]):
                return True
        state[name] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_is_over_400_lines():
    """Modules of one concept: a module that grows past 400 lines is split along its concepts (issue 14)."""
    long = {str(p.relative_to(REPO)): n for folder in ("bert_core", "flows", "tasks")
            for p in sorted((REPO / folder).glob("*.py")) if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
