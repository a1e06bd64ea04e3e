"""The code's layout, as the README's "How the code is laid out" promises it: no import cycle among the
modules of src/ (lazy imports included), every module importable on its own, no module over 400 lines, and
no module but the specs (and the schema that declares their keys) branching on what a method or task is."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import REPO_ROOT

SRC = REPO_ROOT / "src"
MAX_LINES = 400
# The only places allowed to know method and task names, PEFT types and the raw capability fields.
SPEC_MODULES = ("src.specs", "src.config")


def modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The src modules `name` imports anywhere in its body (lazy imports inside functions included)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name and not name.startswith(t + ".")}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_src():
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > 50, "the import graph looks empty: the scan is broken"
    assert cycles(graph) == []


def test_data_flows_one_way():
    """config → data → model → train → evaluate → record → report: no module imports one downstream of it."""
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    downstream = {
        "src.config": ("src.data", "src.models", "src.train", "src.records", "src.report", "src.run"),
        "src.data": ("src.models", "src.methods", "src.train", "src.trainer", "src.records", "src.report"),
        "src.evaluation": ("src.train", "src.trainer", "src.records", "src.report", "src.run"),
        "src.records": ("src.report", "src.train", "src.run", "src.grid"),
        "src.report": ("src.train", "src.run", "src.grid", "src.trainer"),
    }
    wrong = [
        (name, dep)
        for name, deps in graph.items()
        for up, banned in downstream.items()
        if name == up or name.startswith(up + ".")
        for dep in deps
        if any(dep == b or dep.startswith(b + ".") for b in banned)
    ]
    assert wrong == []


def test_every_module_imports_on_its_own():
    """Each module (scripts aside: `__main__` runs the program) in a fresh set of src modules (torch and the
    libraries stay loaded): no module relies on another having been imported first."""
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {sorted(n for n in MODULES if not n.endswith('__main__'))!r}:\n"
        "    for m in [m for m in sys.modules if m == 'src' or m.startswith('src.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed[name] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(failed))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_no_module_over_400_lines(folder):
    sizes = {
        str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines())
        for p in (REPO_ROOT / folder).rglob("*.py")
    }
    assert sizes, folder
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def _names_in_conf(group: str) -> set[str]:
    return {p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml")}


# Spellings of what a method or task is: their names, PEFT's types, and the raw fields a capability was
# once read from (a branch on them belongs in src/specs.py).
NAMES = _names_in_conf("method") | _names_in_conf("task") | {"PROMPT_TUNING", "P_TUNING", "LORA", "SEQ_CLS"}
RAW_FIELDS = re.compile(
    r"(^|\.)(peft_type|is_prompt_learning|active_peft_config|label_field|num_virtual_tokens|generates_text|"
    r"labelled|quantization|untie_head|trainable|trains)$"
)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
    ):
        arg = node.args[0]
        return f"{_dotted(node.func.value)}.{arg.value}" if isinstance(arg, ast.Constant) else ""
    return ""


def branches_on_kinds(path: Path) -> list[str]:
    """Method/task names and PEFT types as string constants, and conditions that read raw capability fields
    (`cfg.task.generates_text`, `data_cfg.get("label_field")` …) instead of a spec (`spec.task.labelled`)."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
            found.append(f"{path.name}:{node.lineno} names {node.value!r}")
        if isinstance(node, ast.If | ast.IfExp | ast.While):
            hits = []
            for sub in ast.walk(node.test):
                dotted = _dotted(sub)
                root = dotted.split(".")[0]
                from_config = root in ("cfg", "config") or root.endswith("_cfg")  # not a spec object
                if dotted and RAW_FIELDS.search(dotted) and (from_config or "peft" in dotted):
                    hits.append(dotted)
            found += [f"{path.name}:{node.lineno} branches on {max(hits, key=len)}"] if hits else []
    return sorted(set(found), key=lambda f: int(f.split(":")[1].split()[0]))


def test_the_branch_finder_finds_branches(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "if cfg.task.generates_text:\n    pass\n"
        "x = 1 if data_cfg.get('label_field') else 2\n"
        "if method == 'lora':\n    pass\n"
        "if spec.task.generates_text:\n    pass\n"
        "if model.active_peft_config.is_prompt_learning:\n    pass\n"
    )
    assert branches_on_kinds(sample) == [
        "sample.py:1 branches on cfg.task.generates_text",
        "sample.py:3 branches on data_cfg.label_field",
        "sample.py:4 names 'lora'",
        "sample.py:8 branches on model.active_peft_config.is_prompt_learning",
    ]


def test_only_the_specs_know_what_a_method_or_task_is():
    found = []
    for name, path in MODULES.items():
        if not any(name == m or name.startswith(m + ".") for m in SPEC_MODULES):
            found += branches_on_kinds(path)
    assert found == []
