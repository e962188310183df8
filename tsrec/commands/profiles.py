"""Named profiles: overlays of params.yaml (``profiles/<name>.yaml``), selected with ``make profile P=<name>``.

    python -m tsrec.commands.profiles NAME [--params params.yaml] [--dry-run]

writes params.yaml = params.yaml + ``cpu`` (the default: it puts back every knob the other profiles
change) + the profile (after the profiles it ``extends``). An overlay's ``absent:`` list names dotted keys
removed before it is merged (``cpu`` removes the variants the other profiles add, which the default
params.yaml does not declare). Only the values that change are rewritten (and removed keys deleted);
comments and layout stay (ruamel round trip). The result is validated as strictly as a stage would, so
DVC records exactly the resolved params. (``profiles/smoke.yaml`` is a complete params file, not an
overlay: tests/smoke.py puts it in place of params.yaml.)
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from tsrec.core.config import deep_merge, load_params, section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.core.io import atomic_file

log = logging.getLogger(__name__)

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT = "cpu"
OVERLAYS = ("cpu", "authors", "paper", "pilot")  # smoke.yaml is a complete params file
ABSENT = "absent"  # overlay key: dotted keys removed before the overlay is merged


def overlay(name: str, folder: Path = PROFILES) -> dict[str, Any]:
    """The overlay of profile ``name`` with the profiles it ``extends`` merged in first."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml") if p.stem in OVERLAYS)
        raise ParamError(f"no profile {name!r}; known: {known}", file=path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ParamError("a profile must be a mapping", file=path)
    parents = raw.pop("extends", [])
    out: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        out = deep_merge(out, overlay(parent, folder))
    return deep_merge(out, raw)


def _without(params: dict[str, Any], dotted: list[str]) -> dict[str, Any]:
    """A copy of ``params`` without the dotted keys (those not there are ignored)."""
    out = deep_merge(params, {})
    for key in dotted:
        *parents, leaf = str(key).split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def resolve(params: dict[str, Any], name: str, folder: Path = PROFILES) -> dict[str, Any]:
    """``params`` with the default profile, then profile ``name``, merged in (each after its ``absent`` keys
    are removed)."""
    out = {k: v for k, v in params.items() if k != "_path"}
    for prof in (DEFAULT, name):
        over = overlay(prof, folder)
        absent = over.pop(ABSENT, [])
        if not isinstance(absent, list):
            raise ParamError(f"{ABSENT} must be a list of dotted keys", file=folder / f"{prof}.yaml", field=ABSENT)
        out = deep_merge(_without(out, absent), over)
    return out


def validate(params: dict[str, Any]) -> None:
    """Every typed section a train/evaluate/rl run reads, for every variant in train.variants, and rl starts
    only from SFT runs the profile trains (rl.variants within train.variants) (ParamError)."""
    from tsrec.lm import llm
    from tsrec.model import sainit
    from tsrec.model.grpo import rl_config
    from tsrec.model.runs import TrainConfig, variant_params
    from tsrec.model.scoring import EvaluateConfig
    from tsrec.model.tasks import tasks_config

    section(params, "evaluate", EvaluateConfig)
    train = section(params, "train", TrainConfig)
    trained = train.variants
    for variant in [*trained, *train.extra.variants]:
        vp = variant_params(params, variant)
        section(vp, "train", TrainConfig), tasks_config(vp), sainit.config(vp), llm.backbone_config(vp)
    if "rl" in params:
        extra = [v for v in rl_config(params).variants if v not in trained]
        if extra:
            raise ParamError(f"rl.variants {extra} are not trained (train.variants {trained})",
                             file=params.get("_path"), field="rl.variants")


def _float(representer, v: float):
    """Floats as params.yaml writes them: 1.0e-3 style at or below 1e-3 (learning rates), else repr."""
    text = repr(v)
    if v and abs(v) <= 1e-3:
        mantissa, exp = f"{v:.15e}".split("e")
        mantissa = mantissa.rstrip("0")
        text = f"{mantissa}0e{int(exp)}" if mantissa.endswith(".") else f"{mantissa}e{int(exp)}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _flow(v: Any) -> Any:
    """Lists as ``[a, b]``, new mappings as ``{k: v}`` (the style of params.yaml)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(v, list):
        seq = CommentedSeq(v)
        seq.fa.set_flow_style()
        return seq
    if isinstance(v, dict):
        node = CommentedMap(v)
        node.fa.set_flow_style()
        return node
    return v


def _assign(node, new: dict[str, Any], where: str = "") -> list[str]:
    """Set the leaves of ``new`` that differ in the ruamel mapping ``node`` and delete its keys ``new`` lacks;
    returns their dotted keys."""
    changed = []
    for k in [k for k in node if k not in new]:
        del node[k]
        changed.append(f"{where}.{k}" if where else str(k))
    for k, v in new.items():
        key = f"{where}.{k}" if where else str(k)
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            changed += _assign(node[k], v, key)
        elif k not in node or node[k] != v or isinstance(node[k], bool) != isinstance(v, bool):
            node[k] = _flow(v)
            changed.append(key)
    return changed


def apply(name: str, params_path: str | Path = "params.yaml", *, write: bool = True) -> list[str]:
    """Select profile ``name`` in ``params_path`` (validated first); returns the dotted keys that changed."""
    from ruamel.yaml import YAML

    params_path = Path(params_path)
    current = load_params(params_path)
    resolved = resolve(current, name)
    resolved["_path"] = str(params_path)
    validate(resolved)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    rt.representer.add_representer(float, _float)
    doc = rt.load(params_path.read_text(encoding="utf-8"))
    changed = _assign(doc, {k: v for k, v in resolved.items() if k != "_path"})
    if write and changed:
        buf = io.StringIO()
        rt.dump(doc, buf)
        with atomic_file(params_path) as fh:
            fh.write(buf.getvalue())
        load_params(params_path)  # what was written reads back
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tsrec.commands.profiles", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"profile: one of {list(OVERLAYS)}")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dry-run", action="store_true", help="list what would change, write nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        changed = apply(args.name, args.params, write=not args.dry_run)
    except TsrecError as exc:
        print(f"tsrec.commands.profiles: error: {exc}", file=sys.stderr)
        return 2
    verb = "would change" if args.dry_run else "changed"
    log.info("profile %s: %s %d value(s) in %s%s", args.name, verb, len(changed), args.params,
             "".join(f"\n  {k}" for k in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
