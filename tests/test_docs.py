"""README.md and docs/ cannot silently go stale: every repository file path, make target, `tsrec` subcommand and
CLI flag and params key they name must exist, and the README's result block must be what `tsrec report`
generates from results/. docs/log.md is a dated record (it names paths as they were) and is not checked; pages that
other branches add are listed in tests/docs_pending.txt (docs/architecture.md, "Docs that stay true")."""

import argparse
import glob
import itertools
import re
from pathlib import Path

import pytest
import yaml

from tsrec.cli import STAGES, build_parser
from tsrec.core.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "log.md")]
PENDING = {line.strip() for line in (ROOT / "tests" / "docs_pending.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
# a token is a repository path when its first component is one of these folders, or it is one of these files
# (generated, uncommitted folders such as data/, artifacts/, cache/ are not checked: a clone has none)
ROOTS = ("tsrec", "tests", "results", "docs", "profiles", "benchmarks")
TOP_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "Makefile", "README.md", "LICENSE", "CITATION.cff",
             "pyproject.toml", "requirements.txt", "requirements-models.txt")
FILE_EXT = re.compile(r"\.(py|md|json|ya?ml|csv|png|txt|parquet|db|npy|log|cff|toml|html|lock|jsonl|gguf|sh"
                      r"|com|org|io)$")  # file names and host names, not params keys
GLOBAL_FLAGS = {"--params", "-v", "--verbose", "-h", "--help"}


def code_texts(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    out = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        out += [re.split(r"\s#\s", line, maxsplit=1)[0] for line in block.splitlines()]  # not the comments
    out += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return out


def path_glob(token: str) -> list[str] | None:
    """The glob patterns a documented path stands for (``<DS>``, ``seed<N>``, ``${x}`` and ``*`` match any name,
    ``{a,b}`` either), or None when the token is not a repository path."""
    token = token.strip(".,;:()'\"").removeprefix("./").split("::", 1)[0]  # a pytest node id names its file
    if not token or "..." in token or "://" in token:
        return None
    first = token.split("/", 1)[0]
    if not ((first in ROOTS and "/" in token) or token in TOP_FILES):
        return None
    pattern = re.sub(r"<[^>]*>|\$\{[^}]*\}", "*", token.rstrip("/"))
    parts = re.split(r"\{([^}]*)\}", pattern)  # odd items: brace alternatives
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*options)]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, flags=re.M))


def stage_flags(stage: str) -> set[str]:
    parser = build_parser([stage, "--help"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[stage]._actions for o in a.option_strings} | GLOBAL_FLAGS


def params_tree() -> dict:
    """params.yaml with every profile overlay merged in (a key a profile declares is a real key)."""
    def merge(a, b):
        for k, v in (b or {}).items():
            a[k] = merge(dict(a.get(k) or {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    for overlay in sorted((ROOT / "profiles").glob("*.yaml")):
        merge(tree, {k: v for k, v in (yaml.safe_load(overlay.read_text()) or {}).items() if k in SECTIONS})
    return tree


def params_key_exists(key: str, tree: dict) -> bool:
    nodes = [tree]
    for part in key.split("."):
        wild = part == "*" or re.fullmatch(r"<[^>]*>", part) is not None
        nodes = [n[k] for n in nodes if isinstance(n, dict) for k in (n if wild else [part]) if k in n]
        if not nodes:
            return False
    return True


PARAMS_KEY = re.compile(r"^([a-z_]+)((?:\.(?:[A-Za-z0-9_@-]+|<[^>]+>|\*))+)$")


def problems(text: str, where: Path, tree: dict | None = None) -> list[str]:
    """What ``text`` (a README or docs page at ``where``) names that does not exist."""
    tree = params_tree() if tree is None else tree
    targets, out = make_targets(), []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):  # Markdown links to files of the repository
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (where.parent / target.split("#", 1)[0]).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists() and rel not in PENDING:
            out.append(f"link to a missing file: {target}")
    for code in code_texts(text):
        tokens = code.split()
        for i, tok in enumerate(tokens):
            for pattern in path_glob(tok) or []:
                if not glob.glob(str(ROOT / pattern)) and pattern not in PENDING:
                    out.append(f"missing path: {tok}")
            if tok == "make" and i + 1 < len(tokens) and re.fullmatch(r"[\w-]+", tokens[i + 1]):
                if tokens[i + 1] not in targets:
                    out.append(f"unknown make target: make {tokens[i + 1]}")
            key = tok.strip(".,;:()'\"")
            m = PARAMS_KEY.match(key)
            if m and m.group(1) in SECTIONS and not FILE_EXT.search(key) and not params_key_exists(key, tree):
                out.append(f"unknown params key: {key}")
        # tsrec <stage> [--flags]: the stage and each flag up to the end of the command
        for m in re.finditer(r"(?:^|\s|/)tsrec((?:\s+--params\s+\S+)?)\s+([a-z][\w-]*)((?:\s+[^|;&#]*)?)", code):
            stage, rest = m.group(2), m.group(3) or ""
            if stage not in STAGES:
                if not re.fullmatch(r"[a-z_]+", stage) or stage in ("is", "and", "the"):  # prose, not a command
                    continue
                out.append(f"unknown tsrec subcommand: tsrec {stage}")
                continue
            flags = stage_flags(stage)
            out += [f"unknown flag of tsrec {stage}: {f}" for f in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", rest)
                    if f.split("=")[0] not in flags]
        if re.fullmatch(r"--[a-z][\w-]*(?:\s+\S+)?", code.strip()):  # a flag named on its own
            flag = code.split()[0]
            if not any(flag in stage_flags(s) for s in STAGES):
                out.append(f"flag of no tsrec subcommand: {flag}")
    return sorted(set(out))


@pytest.fixture(scope="module")
def tree():
    return params_tree()


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_everything_a_page_names_exists(page, tree):
    assert problems(page.read_text(encoding="utf-8"), page, tree) == []


def test_a_planted_stale_name_is_caught(tree):
    page = ROOT / "docs" / "x.md"
    stale = ("Read `results/Industrial_and_Scientific/tsrec/metrics.json`, run `make ablation` and\n"
             "`tsrec evaluate --dataset DS --variant V --paired`; set `train.max_step` and see [the log](nolog.md).\n")
    assert problems(stale, page, tree) == sorted([
        "missing path: results/Industrial_and_Scientific/tsrec/metrics.json",
        "unknown make target: make ablation",
        "unknown flag of tsrec evaluate: --paired",
        "unknown params key: train.max_step",
        "link to a missing file: nolog.md"])
    fine = ("`results/<DS>/<V>/seed<N>/metrics.json`, `make ablations`, `tsrec evaluate --dataset DS --variant V "
            "--seed 42`, `train.max_steps`, `keywords.datasets.<DS>.use`, `variants.authors_tsrec`, [log](log.md), "
            "[gpu](gpu.md)")
    assert problems(fine, page, tree) == []


def test_readme_result_block_is_generated_from_results():
    """The README's numbers are `tsrec report --readme README.md`'s, from the committed results/."""
    from tsrec.reporting.readme import readme_block, readme_current

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    current = readme_current(ROOT / "README.md")
    assert current is not None, "README.md has no result markers"
    expected = readme_block(ROOT / "results", params["data"]["datasets"], list(params["variants"]), params["seed"])
    assert current == expected, "README result block is stale: run `tsrec report --readme README.md`"


def test_readme_opens_with_the_two_commands_and_stays_small():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make repro", "make test"]
    assert text.index("```bash") < 200 and len(text.encode()) <= 15_000


def test_top_level_plots_overlay_the_matrix():
    """dvc.yaml's top-level plots (what `dvc plots show` overlays): one plot per dataset and seed of the train
    matrix with a line per variant, and one per RL run pair; every file exists in results/."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    plots = {k: v for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for k, v in p.items()}
    t, rl = params["train"], params["rl"]
    want = {f"valid_ndcg/{d}/seed{s}": {f"results/{d}/{v}/seed{s}/valid_rank.csv": "NDCG@10" for v in t["variants"]}
            for d in t["datasets"] for s in t["seeds"]}
    want |= {f"rl_valid_ndcg/{d}/seed{s}": {f"results/{d}/{v}_rl/seed{s}/rl_valid.csv": "NDCG@10"
                                            for v in rl["variants"]} for d in rl["datasets"] for s in rl["seeds"]}
    assert {k: v["y"] for k, v in plots.items()} == want
    # every run made has its file (the matrix is re-measured run by run: issue 37); at least one has landed
    made = [f for y in want.values() for f in y if (ROOT / f).parent.joinpath("train_summary.json").is_file()]
    assert made and all((ROOT / f).is_file() for f in made)
