"""The import graph of the project's own packages: no cycle, and imports go one way.

Layers, lowest first: vtp (the model, tokenizer, image I/O, checkpoints) <- ascend (device, distributed,
fusion) <- the applications: verify (the certification) and vtp_tools (VTP's eval and extraction tools;
verify may run them, they never import verify). Inside verify/ each stage imports only stages before it
(STAGES). Every import counts, the lazy ones inside functions included: a cycle through a function-level
import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("vtp", "ascend", "verify", "vtp_tools")
LAYER = {"vtp": 0, "ascend": 1, "verify": 2, "vtp_tools": 2}
APP_EDGES = {("verify", "vtp_tools")}  # the certification may call the tools; never the other way

# Command shims kept so that the commands users already run keep working (python -m vtp.eval / vtp.extract):
# the only files of a lower layer allowed to import a higher one, and they hold nothing else.
SHIMS = {"vtp.eval.__main__": "vtp_tools", "vtp.extract": "vtp_tools"}

# verify/: the certification's stages in pipeline order. A module imports only its own stage or earlier.
STAGES = [
    ("foundations", ["verify", "verify.metrics", "verify.faults", "verify.timing", "verify.plots", "verify.cli",
                     "verify.fp32_modules", "verify.threads"]),
    ("cases and gates", ["verify.envelope", "verify.cases", "verify.thresholds", "verify.verdict", "verify.divergence"]),
    ("run", ["verify.run"]),
    ("compare and judge", ["verify.judge", "verify.layer_compare", "verify.slow_ranks"]),
    ("locate", ["verify.lockstep", "verify.first_divergent", "verify.locate", "verify.bisection", "verify.golden"]),
    ("artifacts", ["verify.artifacts", "verify.setup"]),
    ("report", ["verify.report", "verify.report.fmt", "verify.report.summary", "verify.report.table",
                "verify.report.server_table", "verify.report.html", "verify.report.cli", "verify.report.__main__",
                "verify.report.page", "verify.report.glance", "verify.report.server_html",
                "verify.report.burn_in"]),
    ("harness", ["verify.preflight", "verify.accuracy_eval", "verify.env_check", "verify.bench",
                 "verify.original", "verify.model_parity", "verify.bench_original", "verify.spot_checks", "verify.probes", "verify.burn_in", "verify.levels"]),
    ("tools above the harness", ["verify.server", "verify.server.common", "verify.server.collectives",
                                 "verify.server.consistency", "verify.server.summary", "verify.server.launch",
                                 "verify.server.worker", "verify.server.cli", "verify.server.__main__",
                                 "verify.selftest", "verify.compare"]),
]
STAGE_OF = {name: i for i, (_, names) in enumerate(STAGES) for name in names}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path) -> dict:
    """{module name: path} of every .py file of the project's packages under ``root``."""
    return {module_name(p, root): p for pkg in PACKAGES if (root / pkg).is_dir()
            for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known) -> set:
    """The project modules ``name`` imports (absolute and relative, module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = set()

    def resolve(dotted: str):
        while dotted and dotted not in known:  # `from pkg.mod import func` -> pkg.mod
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from verify.report import html` imports verify.report.html
                resolve(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return found


def import_graph(root: Path) -> dict:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import cycle as a list of module names (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer_violations(graph: dict) -> list:
    """Imports from a lower layer to a higher one, and from a verify stage to a later stage."""
    bad = []
    for src, targets in graph.items():
        top = src.split(".")[0]
        for dst in sorted(targets):
            other = dst.split(".")[0]
            if top != other:
                if (LAYER[other] > LAYER[top] or (LAYER[other] == LAYER[top] and (top, other) not in APP_EDGES)) \
                        and SHIMS.get(src) != other:
                    bad.append(f"{src} -> {dst}: {top} (layer {LAYER[top]}) must not import {other} "
                               f"(layer {LAYER[other]})")
            elif top == "verify" and src in STAGE_OF and dst in STAGE_OF and STAGE_OF[dst] > STAGE_OF[src]:
                bad.append(f"{src} ({STAGES[STAGE_OF[src]][0]}) -> {dst} ({STAGES[STAGE_OF[dst]][0]}): a stage "
                           "imports only stages before it")
    return bad


# --------------------------------------------------------------------------------------------- the project
def test_the_project_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way():
    assert layer_violations(import_graph(REPO)) == []


def test_every_verify_module_has_a_stage():
    """A new file in verify/ says where it sits in the pipeline (add it to STAGES)."""
    unplaced = sorted(n for n in project_modules(REPO) if n.split(".")[0] == "verify" and n not in STAGE_OF)
    assert unplaced == []


def test_the_shims_only_forward():
    for name in SHIMS:
        path = REPO / (name.replace(".", "/") + ".py")
        if not path.exists():
            pytest.skip(f"{path} absent")
        code = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(code) <= 12, f"{path} is a command shim and should only forward ({len(code)} lines)"


def test_the_model_imports_nothing_above_it():
    graph = import_graph(REPO)
    above = {src: sorted(t for t in dsts if t.split(".")[0] != "vtp") for src, dsts in graph.items()
             if src.split(".")[0] == "vtp" and src not in SHIMS}
    assert {k: v for k, v in above.items() if v} == {}


# --------------------------------------------------------------------------------------------- the checker
def _tree(tmp_path: Path, files: dict) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


def test_a_cycle_is_found_even_through_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "verify/__init__.py": "",
        "verify/cases.py": "from verify.run import run_case\n",
        "verify/run.py": "def run_case():\n    from verify import cases\n",
    })
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and set(cycle) == {"verify.cases", "verify.run"}


def test_an_upward_import_is_named(tmp_path):
    root = _tree(tmp_path, {
        "vtp/__init__.py": "", "vtp/model.py": "import ascend.device\n",
        "ascend/__init__.py": "", "ascend/device.py": "from vtp import model\n",
        "vtp_tools/__init__.py": "", "vtp_tools/x.py": "from verify import metrics\n",
        "verify/__init__.py": "", "verify/metrics.py": "", "verify/run.py": "from verify.locate import locate\n",
        "verify/locate.py": "from .run import TASKS\n",
    })
    bad = "\n".join(layer_violations(import_graph(root)))
    assert "vtp.model -> ascend.device" in bad
    assert "vtp_tools.x -> verify.metrics" in bad
    assert "verify.run (run) -> verify.locate (locate)" in bad
    assert "ascend.device" not in bad.split("vtp.model -> ascend.device")[1]  # ascend -> vtp is allowed
