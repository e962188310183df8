"""``tsrec <stage>``: one subcommand per pipeline stage (and per dvc.yaml stage of the same name)."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import os
import sys

from tsrec.core.errors import TsrecError
from tsrec.core.io import NO_SPACE

# stage name -> (module, help); each module defines add_arguments(parser) and run(args, params).
# Only the stage being run is imported (``tsrec --help`` imports none of them).
STAGES = {
    "data": ("tsrec.commands.data", "mirror or download -> sha256 check -> canonical parquet splits"),
    "embed": ("tsrec.commands.embed", "frozen text-encoder embeddings of every item"),
    "codebook": ("tsrec.commands.codebook", "SID indexes (official / RQ-VAE / RQ-KMeans) and their report"),
    "keywords": ("tsrec.commands.keywords", "per-SID-token keywords + description caches (teachers in use)"),
    "teachers": ("tsrec.commands.teachers", "optional keyword caches (e.g. the slow hf teacher)"),
    "backbone": ("tsrec.commands.backbone", "convert the pretrained backbone once to a safetensors folder"),
    "train": ("tsrec.commands.train", "multi-task SFT with SID tokens, SA-Init and TS-Align (one variant)"),
    "rl": ("tsrec.commands.rl", "GRPO after SFT: beam-search rollouts over the SID trie, ranking reward (one variant)"),
    "evaluate": ("tsrec.commands.evaluate", "constrained beam search on valid/test -> HR@K / NDCG@K"),
    "baseline": ("tsrec.commands.baseline", "train and score one baseline model"),
    "llm-baseline": ("tsrec.commands.llm_baseline", "BIGRec / D3 / S-DPO: the title SFT, S-DPO, grounding or title-trie decoding"),
    "sweep": ("tsrec.commands.sweep", "Optuna sweep over SA-Init pooling and the TS-Align weight"),
    "report": ("tsrec.commands.report", "Recall/NDCG tables from the metrics files"),
    "paired": ("tsrec.commands.paired", "paired test of two evaluated variants on their saved row ranks (no decoding)"),
    "budget": ("tsrec.commands.budget", "the pilot rule on valid-ranking curves: the equal budget B and the selection rule"),
    "check": ("tsrec.commands.check", "compare the metrics files with a committed expected file (regression check)"),
    "migrate-seed-layout": ("tsrec.commands.migrate", "move runs made before per-seed folders into seed<N>/ (no retraining)"),
    "land": ("tsrec.commands.land", "bring runs finished in another worktree (a lane) into this one: dvc.lock entries + tracked outputs"),
}
NOT_STAGES = {"paired", "budget", "check", "migrate-seed-layout", "land"}  # commands run by hand around `dvc repro`, not pipeline stages
NO_PARAMS = {"budget", "check", "migrate-seed-layout", "land"}  # they run wherever the results are, params.yaml or not

log = logging.getLogger("tsrec")


HELP = {"-h", "--help"}


def help_arguments(path: str):
    """The ``add_arguments`` of stage module ``path`` without importing it (a stage module imports torch & co.,
    seconds; help must not wait for that): compiled from the module's source together with its top-level
    assignments of literal constants (e.g. ``MODELS = (...)``). None when the function needs anything else, then
    the caller imports the module. tests/test_cli_help.py checks every stage's help equals the imported one."""
    spec = importlib.util.find_spec(path)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read(), spec.origin)
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "add_arguments"), None)
    if func is None:
        return None
    namespace: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            namespace.update({t.id: value for t in node.targets})
    code = compile(ast.Module(body=[func], type_ignores=[]), spec.origin, "exec")
    exec(code, {"__builtins__": __builtins__, **namespace}, namespace)
    return namespace["add_arguments"]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI; only the stage named in ``argv`` (if any) is imported to register its options (for ``--help``
    not even that: ``help_arguments``)."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for i, a in enumerate(argv) if a in STAGES and (i == 0 or argv[i - 1] != "--params")), None)
    want_help = bool(HELP & set(argv))
    parser = argparse.ArgumentParser(prog="tsrec", description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml or $TSREC_PARAMS)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (path, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            add = help_arguments(path) if want_help else None
            try:
                if add is not None:
                    add(argparse.ArgumentParser())  # a dry run: it may read a name that is no literal constant
                    add(p)
                    continue
            except NameError:
                pass
            mod = importlib.import_module(path)
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
    return parser


def _pin_cpu(argv: list[str]) -> dict | None:
    """Apply params ``repro`` (torch CPU kernel set, threads: tsrec.core.pinning) before torch loads; returns the
    params read (None where there is no params file), which the command then uses."""
    from tsrec.core.config import DEFAULT_PARAMS, load_params
    from tsrec.core.pinning import apply, config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--params", default=None)
    known, _ = pre.parse_known_args(argv)
    path = known.params or os.environ.get("TSREC_PARAMS") or DEFAULT_PARAMS
    if not os.path.isfile(path):
        return None  # commands without params (check) or --help; a stage that needs the file says so itself
    params = load_params(path)
    apply(config(params), params["_path"])
    return params


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core box, spinning made a 2-thread training
    # step ~5x slower (14 s vs 2.6 s per step measured here). Must be set before torch loads; env overrides.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else argv
    try:
        pinned = _pin_cpu(argv)  # before any stage module imports torch
    except TsrecError as exc:
        print(f"tsrec: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tsrec.core.config import load_params

    try:
        if args.stage in NO_PARAMS and args.params is None:
            params = {}
        else:  # the file _pin_cpu read (same --params / $TSREC_PARAMS / default), else the loader's error
            params = pinned if pinned is not None else load_params(args.params)
        args._module.run(args, params)
    except TsrecError as exc:
        log.error("%s", exc)
        print(f"tsrec {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT (Ctrl-C, or `dvc repro` interrupted): temps removed, outputs as they were
        print(f"tsrec {args.stage}: interrupted; the previous complete outputs are left in place", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tsrec {args.stage}: error: {where}disk full ({exc.strerror}); the previous complete outputs are "
              "left in place: free space and rerun", file=sys.stderr)
        return 2
    return 0
