"""What each pipeline stage reads, derived from the code: the tsrec files its module imports (transitively,
function-level imports included) and the params sections those files read. tests/test_wiring.py holds
dvc.yaml against it."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tsrec"
PARAM_VARS = {"params", "vp"}  # names the params dict travels under


def module_file(mod: str) -> Path | None:
    rel = Path(*mod.split("."))
    for cand in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


@lru_cache(maxsize=None)
def direct_imports(path: Path) -> frozenset[Path]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        mods = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tsrec":
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.split(".")[0] == "tsrec"]
        for mod in mods:
            parts = mod.split(".")
            for i in range(2, len(parts) + 1):  # a submodule import runs its packages' __init__ too
                f = module_file(".".join(parts[:i]))
                if f is not None:
                    out.add(f)
    out.discard(PKG / "__init__.py")
    return frozenset(out - {path})


def closure(mod: str) -> set[Path]:
    start = module_file(mod)
    seen, todo = {start}, [start]
    while todo:
        for f in direct_imports(todo.pop()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def import_graph() -> dict[Path, frozenset[Path]]:
    return {f: direct_imports(f) for f in sorted(PKG.rglob("*.py"))}


# ---------------------------------------------------------------- params: a function-level call graph
def _section_reads(node: ast.AST) -> set[str]:
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            name = n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
            if name in ("section", "section_with_flags") and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant):
                found.add(n.args[1].value)
            elif name == "global_seed":
                found.add("seed")
            elif (name == "get" and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                  and n.func.value.id in PARAM_VARS and n.args and isinstance(n.args[0], ast.Constant)):
                found.add(n.args[0].value)
        elif (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in PARAM_VARS
              and isinstance(n.slice, ast.Constant)):
            found.add(n.slice.value)
    return {s for s in found if isinstance(s, str) and not s.startswith("_")}


@lru_cache(maxsize=None)
def _module_defs(mod: str) -> tuple[dict, dict, dict]:
    """(def name -> (section reads, referenced names, referenced module attrs), name -> (module, attr),
    alias -> module) of one module; a class counts as one def (all its methods)."""
    path = module_file(mod)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names, modules = {}, {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "tsrec":
            for a in n.names:
                if module_file(f"{n.module}.{a.name}") is not None:
                    modules[a.asname or a.name] = f"{n.module}.{a.name}"
                else:
                    names[a.asname or a.name] = (n.module, a.name)
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "tsrec":
                    modules[a.asname or a.name] = a.name
    defs = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            refs = {x.id for x in ast.walk(n) if isinstance(x, ast.Name)}
            attrs = {(x.value.id, x.attr) for x in ast.walk(n)
                     if isinstance(x, ast.Attribute) and isinstance(x.value, ast.Name)}
            defs[n.name] = (_section_reads(n), refs, attrs)
    return defs, names, modules


def params_read(mod: str, entry: str = "run") -> set[str]:
    """Top-level params sections the functions reachable from ``mod.entry`` read (names resolved through
    imports; calls on objects are not followed, so a method reading params would be missed)."""
    seen, todo, found = set(), [(mod, entry)], set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        m, name = key
        defs, names, modules = _module_defs(m)
        if name not in defs:
            if name in names:
                todo.append(names[name])
            continue
        reads, refs, attrs = defs[name]
        found |= reads
        for r in refs:
            if r in defs:
                todo.append((m, r))
            elif r in names:
                todo.append(names[r])
        for alias, attr in attrs:
            if alias in modules:
                todo.append((modules[alias], attr))
    return found


# ---------------------------------------------------------------- wings: the folder tree is the architecture
# bottom -> top; a module imports only its own wing and the wings below it; commands import no command
WINGS = ("core", "data", "eval", "lm", "semantics", "model", "baselines", "tuning", "reporting", "commands")
TOP = {"__init__.py", "__main__.py", "cli.py"}  # above every wing
# the functions outside commands/ that may take the raw params dict: resolvers that return a typed config
RESOLVER_NAMES = {"section", "section_with_flags", "global_seed", "check_top_level", "variant_params",
                  "apply_overrides", "config"}
MAX_FUNCTION_LINES = 80


def wing_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    if len(rel.parts) == 1:
        if rel.name in TOP:
            return "top"
        raise AssertionError(f"{rel}: a module outside every wing (move it into one of {WINGS})")
    if rel.parts[0] not in WINGS:
        raise AssertionError(f"{rel}: folder {rel.parts[0]!r} is not a wing; list it in tests/wiring.py WINGS")
    return rel.parts[0]


def rank(wing: str) -> int:
    return len(WINGS) if wing == "top" else WINGS.index(wing)


def wing_violations(graph: dict[Path, frozenset[Path]]) -> list[str]:
    """Imports that climb (a wing importing a wing above it) and commands importing a command."""
    bad = []
    for f, deps in graph.items():
        for d in deps:
            src, dst = wing_of(f), wing_of(d)
            if rank(dst) > rank(src):
                bad.append(f"{f.relative_to(PKG)} ({src}) imports {d.relative_to(PKG)} ({dst}), a wing above it")
            elif src == dst == "commands" and d.name != "__init__.py":
                bad.append(f"{f.relative_to(PKG)} imports the command {d.relative_to(PKG)}")
    return sorted(bad)


def functions(root: Path = PKG):
    """(path, def node) of every function and method under ``root``."""
    for f in sorted(root.rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f, n


def takes_params(node: ast.AST) -> bool:
    a = node.args
    return any(x.arg in PARAM_VARS for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])


def is_resolver(name: str) -> bool:
    return name in RESOLVER_NAMES or name.endswith("_config") or name.startswith("resolve_")
