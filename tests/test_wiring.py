"""dvc.yaml and the import graph cannot drift apart: each stage's code deps are the files its module imports,
its params the sections its code reads; no import cycles; no stage module imports another stage module."""

import ast
import fnmatch
import re

import pytest
import yaml
from wiring import (
    MAX_FUNCTION_LINES,
    PKG,
    ROOT,
    closure,
    functions,
    import_graph,
    is_resolver,
    module_file,
    params_read,
    takes_params,
    wing_of,
    wing_violations,
)

from tsrec.cli import NOT_STAGES, STAGES

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_MODULES = {module_file(mod) for name, (mod, _) in STAGES.items() if name not in NOT_STAGES}
COMMANDS = {PKG / "cli.py", PKG / "__main__.py", PKG / "commands" / "profiles.py"} | {
    module_file(mod) for name, (mod, _) in STAGES.items() if name in NOT_STAGES}

# sections a stage's code can read that dvc.yaml leaves out on purpose, with the reason
NOT_DECLARED = {
    "train": {"seed": "dvc passes --seed ${item.seed}: the top-level seed is only the CLI default"},
    "rl": {"seed": "dvc passes --seed ${item.seed}: the top-level seed is only the CLI default",
           "tasks": "prompts come from the SFT run's final/tsrec_meta.json, a dep (see the comment in dvc.yaml)"},
    "evaluate": {"tasks": "prompts come from the run's final/tsrec_meta.json, a dep; params' only for --model-dir"},
    "evaluate_rl": {"tasks": "prompts come from the run's final/tsrec_meta.json, a dep; params' only for --model-dir"},
    "llm-sft": {"seed": "dvc passes --seed ${item.seed}: the top-level seed is only the CLI default",
                "evaluate": "scoring only (stage llm-baseline)", "codebook": "scoring only (SID-level metrics)",
                "baselines": "D3's assistant only (stage llm-baseline)"},
    "llm-baseline": {"tasks": "prompts come from the SFT run's final/tsrec_meta.json, a dep"},
}


def body(stage: dict) -> dict:
    return stage.get("do", stage)


def module_of(stage: dict) -> str:
    return STAGES[body(stage)["cmd"].split()[1]][0]


def declared_code(stage: dict) -> set[str]:
    out = set()
    for d in body(stage).get("deps", []):
        if isinstance(d, str) and d.startswith("tsrec"):
            p = ROOT / d
            out |= {str(f.relative_to(ROOT)) for f in p.rglob("*.py")} if p.is_dir() else {d}
    return out


@pytest.mark.parametrize("name", sorted(DVC))
def test_code_deps_are_the_imports(name):
    derived = {str(f.relative_to(ROOT)) for f in closure(module_of(DVC[name]))}
    declared = declared_code(DVC[name])
    assert (sorted(derived - declared), sorted(declared - derived)) == ([], []), "(missing in dvc.yaml, not imported)"


@pytest.mark.parametrize("name", sorted(DVC))
def test_params_are_the_sections_read(name):
    derived = params_read(module_of(DVC[name])) - set(NOT_DECLARED.get(re.sub(r"_(extra|confirm)$", "", name), {}))
    declared = {re.split(r"[.]", str(p))[0] for p in body(DVC[name]).get("params", [])}
    assert (sorted(derived - declared), sorted(declared - derived)) == ([], []), "(read but undeclared, declared unread)"


def test_every_cli_stage_is_a_dvc_stage():
    assert {name for name in STAGES if name not in NOT_STAGES} == {body(s)["cmd"].split()[1] for s in DVC.values()}


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _pattern(path: str) -> str:
    """A dvc.yaml path with params interpolated and the matrix / foreach item as a wildcard."""
    def value(m):
        if m.group(1).startswith("item"):
            return "*"
        v = PARAMS
        for k in m.group(1).split("."):
            v = v[k]
        return str(v)

    return re.sub(r"\$\{([^}]+)\}", value, str(path))


def test_stages_in_pipeline_order():
    """A stage comes after every stage whose outputs it reads."""
    names = list(DVC)
    outs = {n: [_pattern(next(iter(o)) if isinstance(o, dict) else o) for o in body(DVC[n]).get("outs", [])]
            for n in names}
    for i, n in enumerate(names):
        for dep in body(DVC[n]).get("deps", []):
            dep = _pattern(dep)
            for m in names:
                if m != n and any(fnmatch.fnmatch(dep, o) or fnmatch.fnmatch(dep, o + "/*") for o in outs[m]):
                    assert names.index(m) < i, f"{n} reads {dep} of {m}, listed after it"


def _cycles(graph):
    color, stack, found = {}, [], []

    def visit(u):
        color[u] = 1
        stack.append(u)
        for v in graph.get(u, ()):
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                visit(v)
        color[u] = 2
        stack.pop()

    for u in graph:
        if not color.get(u):
            visit(u)
    return found


def test_no_import_cycles():
    assert _cycles(import_graph()) == []
    assert _cycles({"a": {"b"}, "b": {"a"}}) != []


def test_stage_modules_import_no_stage_module():
    """Stages share code through library modules only; commands (cli, profiles, check, ...) sit on top."""
    bad = {}
    for f, deps in import_graph().items():
        if f in COMMANDS:
            continue
        hit = sorted(str(d.relative_to(ROOT)) for d in deps & STAGE_MODULES)
        if hit:
            bad[str(f.relative_to(ROOT))] = hit
    assert bad == {}


def test_no_private_names_imported_across_modules():
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tsrec"):
                bad += [f"{f.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
    assert bad == []


# ---------------------------------------------------------------- wings
def test_wings_import_only_wings_below():
    assert wing_violations(import_graph()) == []


def test_wing_check_fails_on_planted_violations():
    graph = dict(import_graph())
    layout, sft = PKG / "data" / "layout.py", PKG / "model" / "sft.py"
    train, evaluate = PKG / "commands" / "train.py", PKG / "commands" / "evaluate.py"
    graph[layout] = graph[layout] | {sft}            # data -> model: upward
    graph[train] = graph[train] | {evaluate}         # a command importing a command
    planted = set(wing_violations(graph)) - set(wing_violations(import_graph()))
    assert planted == {"commands/train.py imports the command commands/evaluate.py",
                       "data/layout.py (data) imports model/sft.py (model), a wing above it"}


def test_no_library_function_takes_the_params_dict():
    """params.yaml is resolved once, by the command: outside commands/ only resolvers (``*_config``,
    ``resolve_*``, ``section``...) returning a typed config see the raw dict."""
    bad = [f"{f.relative_to(ROOT)}:{n.lineno} {n.name}" for f, n in functions()
           if wing_of(f) not in ("commands", "top") and takes_params(n) and not is_resolver(n.name)]
    assert bad == []


def test_functions_a_reader_can_hold():
    long = [f"{f.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for f, n in functions() if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
