import pkgutil
import subprocess
import sys

import bert_core
from tests.conftest import REPO


def test_bert_core_never_imports_prefect():
    modules = [m.name for m in pkgutil.walk_packages(bert_core.__path__, "bert_core.") if not m.name.endswith("__main__")]
    assert len(modules) >= 40 and "bert_core.ingest.corpus" in modules
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "assert 'prefect' not in sys.modules, [m for m in sys.modules if m.startswith('prefect')]\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_lists_one_subcommand_per_stage():
    """Each stage is a subcommand of its own, listed as one in `--help` (a word in another line does not count: the
    module docstring says "pretrain", finetune-ner contains "finetune", rollback's help says "register")."""
    import re

    out = subprocess.run([sys.executable, "-m", "bert_core", "--help"], cwd=REPO, capture_output=True, text=True)
    listed = re.findall(r"^    (\S+)  +\S", out.stdout, flags=re.MULTILINE)
    stages = ["ingest", "examples", "pretrain", "finetune", "evaluate", "suite", "register"]
    assert out.returncode == 0 and [name for name in listed if name in stages] == stages, listed


def test_no_measured_figures_in_code_or_yaml():
    """Throughputs, CPU models and dated measurements go stale where they are written in code or in deployment
    descriptions (which the Prefect UI shows as current); they live in the docs (docs/measurements.md)."""
    import re

    pattern = re.compile(r"\d[\d,.]*\s*tokens/s|EPYC|Xeon|Ryzen|Threadripper|Graviton|\b20\d\d-\d\d-\d\d\b")
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for folder in ("bert_core", "flows", "tasks", "deployments")
             for path in sorted((REPO / folder).rglob("*")) if path.suffix in (".py", ".yaml", ".yml", ".toml")
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found
    probe = "on an AMD EPYC it ran at 3,881 tokens/s on 2026-12-07"
    assert len(pattern.findall(probe)) == 3  # the check sees each kind of figure


def test_cli_rejects_unknown_config_keys(tmp_path):
    (tmp_path / "c.json").write_text('{"shards_dir": "x", "output_dir": "y", "lerning_rate": 1}')
    out = subprocess.run([sys.executable, "-m", "bert_core", "pretrain", "--config", str(tmp_path / "c.json")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown PretrainConfig option(s) ['lerning_rate']" in out.stderr


# The stage packages in the pipeline's order: a package imports only the shared top-level modules and the packages
# before it, so the layout reads top to bottom and no stage reaches into a later one.
PACKAGE_ORDER = ("ingest", "examples", "training", "downstream", "registry")


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _bert_core_imports() -> dict[str, set[str]]:
    """bert_core module (dotted) -> the bert_core modules it imports anywhere (top level or inside functions)."""
    import ast

    paths = sorted((REPO / "bert_core").rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name, deps = _module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bert_core":
                deps |= {f"{node.module}.{a.name}" for a in node.names} & modules or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("bert_core.")}
        graph[name] = deps & modules - {name}
    return graph


def _package_of(module: str) -> str:
    """The stage package of a module, or "" for the shared top-level modules (config, stage, metrics, tracking)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGE_ORDER) else ""


def test_bert_core_import_graph_is_acyclic():
    """Function-local imports count too: a cycle hidden in a function is still a cycle (evaluate <-> finetune
    was one; their shared metrics now live in bert_core.metrics)."""
    graph = _bert_core_imports()
    assert graph["bert_core.downstream.finetune"] and graph["bert_core.downstream.evaluation"]  # imports are seen
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


def test_packages_import_only_downward():
    """ingest < examples < training < downstream < registry, the shared top-level modules below them all: a module
    imports nothing from a later package, and a shared module imports no package at all."""
    rank = {"": 0} | {name: i + 1 for i, name in enumerate(PACKAGE_ORDER)}
    graph = _bert_core_imports()
    assert {_package_of(m) for m in graph} >= set(PACKAGE_ORDER)
    upward = sorted(f"{module} -> {dep}" for module, deps in graph.items() if not module.endswith("__main__")
                    for dep in deps if rank[_package_of(dep)] > rank[_package_of(module)])
    assert not upward, upward


def test_no_module_is_over_400_lines():
    """Modules of one concept: a module that grows past 400 lines is split along its concepts (issue 14)."""
    long = {str(p.relative_to(REPO)): n for folder in ("bert_core", "flows", "tasks")
            for p in sorted((REPO / folder).rglob("*.py")) if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_function_level_imports_say_why():
    """An import inside a function is there to keep a process's start-up light (the CLI, a training rank, a data
    worker) or to import only the library a config chooses; each says which in a comment. Others go at the top."""
    import ast

    silent = []
    for path in sorted((REPO / "bert_core").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                silent += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(function)
                           if isinstance(node, (ast.Import, ast.ImportFrom))
                           and "#" not in lines[node.lineno - 1] + lines[node.end_lineno - 1]]
    assert not silent, silent
