"""params.yaml is the single source of truth; each stage reads its own typed section."""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tsrec.core.errors import ParamError

DEFAULT_PARAMS = "params.yaml"
T = TypeVar("T")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, at any depth (PyYAML keeps the last one,
    so a second ``train:`` block would silently replace the first; DVC refuses such a file)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamError(f"key {key!r} given twice (lines {seen[key]} and {line}); a YAML mapping keeps only "
                                 "the last", file=key_node.start_mark.name, line=line, field=str(key))
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file: UTF-8, each key once per mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamError(f"not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
                         file=path) from None
    loader = UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ParamError(f"invalid YAML: {exc}", file=path, line=mark.line + 1 if mark else None) from exc
    finally:
        loader.dispose()


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read params.yaml (``--params`` or ``$TSREC_PARAMS`` override the default path)."""
    path = Path(path or os.environ.get("TSREC_PARAMS") or DEFAULT_PARAMS)
    if not path.is_file():
        raise ParamError("params file not found", file=path)
    params = read_yaml(path)
    if params is None:
        raise ParamError("empty (or comments only): every stage would run on code defaults; restore it (git "
                         "checkout params.yaml, or make profile P=<name>)", file=path)
    if not isinstance(params, dict):
        raise ParamError("top level must be a mapping", file=path)
    check_top_level(params, path)
    params["_path"] = str(path)
    return params


# every top-level key some stage reads (a typo such as ``sede:`` or ``trian:`` would be silently ignored)
SECTIONS = ("seed", "data", "raw", "report", "embed", "backbone", "sainit", "tasks", "train", "variants",
            "baselines", "sweep", "evaluate", "codebook", "keywords", "rl", "repro", "llm_baselines")


def _key_lines(path: Path) -> dict[str, int]:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    return {k.value: k.start_mark.line + 1 for k, _ in pairs if isinstance(k, yaml.ScalarNode)}


def global_seed(params: dict[str, Any]) -> int:
    """The top-level ``seed`` (required: no stage falls back to a seed of its own)."""
    if "seed" not in params:
        raise ParamError("missing required key", file=params.get("_path", DEFAULT_PARAMS), field="seed")
    return int(params["seed"])


def check_top_level(params: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse unknown top-level keys (naming file, line and the closest known key) and a non-integer seed."""
    import difflib

    unknown = [k for k in params if k not in SECTIONS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), SECTIONS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParamError(f"unknown top-level key {key!r}; {hint}known: {list(SECTIONS)}", file=path,
                         line=_key_lines(Path(path)).get(str(key)), field=str(key))
    runs = (params.get("repro") or {}).get("runs") or []
    t = params.get("train") or {}
    known = (params.get("data") or {}).get("datasets") if isinstance(params.get("data"), dict) else None
    if isinstance(t, dict) and isinstance(known, list):
        extra = t.get("extra") if isinstance(t.get("extra"), dict) else {}
        listed = [*(t.get("datasets") or []), *(extra.get("datasets") or [])]
        unknown_ds = [d for d in listed if d not in known]
        if unknown_ds:
            raise ParamError(f"train datasets {unknown_ds} are not in data.datasets {known} (no stage builds them)",
                             file=path, line=_key_lines(Path(path)).get("train"), field="train.datasets")
    matrix = {f"{d}-{v}-{s}" for d in t.get("datasets") or [] for v in t.get("variants") or []
              for s in t.get("seeds") or []}
    stray = [r for r in runs if r not in matrix]
    if stray and matrix:
        raise ParamError(f"{stray} not in the train matrix (train.datasets x variants x seeds: <DS>-<variant>-<seed>)",
                         file=path, line=_key_lines(Path(path)).get("repro"), field="repro.runs")
    seed = params.get("seed", 0)  # required where read (global_seed); checked here where present
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamError(f"must be an integer, got {seed!r}", file=path, line=_key_lines(Path(path)).get("seed"),
                         field="seed")


def _check(value: Any, tp: Any, where: str, file: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ParamError(f"must be one of {list(typing.get_args(tp))}, got {value!r}", file=file, field=where)
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check(value, arg, where, file)
            except ParamError as exc:
                errors.append(str(exc))
        raise ParamError(f"{value!r} matches none of {tp}", file=file, field=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"must be a list, got {value!r}", file=file, field=where)
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_check(v, arg, f"{where}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(f"must be a mapping, got {value!r}", file=file, field=where)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, file)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ParamError(f"must be {tp.__name__}, got {value!r}", file=file, field=where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ParamError(f"must be {tp.__name__}, got {value!r}", file=file, field=where)
    return value


def from_dict(cls: type[T], raw: Any, where: str, file: str = DEFAULT_PARAMS) -> T:
    """Build dataclass ``cls`` from ``raw``: unknown keys and wrong types raise ParamError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamError(f"must be a mapping, got {raw!r}", file=file, field=where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamError(f"unknown key(s) {unknown}; expected some of {sorted(names)}", file=file, field=where)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _check(raw[f.name], hints[f.name], f"{where}.{f.name}", file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamError("missing required key", file=file, field=f"{where}.{f.name}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise ParamError(str(exc), file=file, field=where) from exc
    return obj


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Typed view of ``params[name]``; a ``validate()`` method on ``cls`` may raise ValueError."""
    return from_dict(cls, params.get(name), name, params.get("_path", DEFAULT_PARAMS))


def section_with_flags(params: dict[str, Any], name: str, cls: type[T], flags: dict[str, Any]) -> T:
    """``section`` with command-line values on top; a bad value names the flag, not params.yaml (whose own
    values are checked first, naming the file)."""
    base = section(params, name, cls)
    if not flags:
        return base
    shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())
    return from_dict(cls, {**(params.get(name) or {}), **flags}, name, f"command line ({shown})")


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of ``base`` with ``over`` merged in: nested mappings merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
