"""Turn a preset name, JSON file, dict or Target into a Target."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from lowbit.errors import TargetError
from lowbit.target.target import Target

_PRESETS = resources.files(__package__) / "presets"


def preset_names() -> list[str]:
    """Names of the targets shipped with lowbit, sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in _PRESETS.iterdir() if entry.name.endswith(".json"))


def load_target(spec: str | os.PathLike | Mapping | Target) -> Target:
    """Load a target from a preset name, a JSON file path, a config dict, or return a Target as is.
    A string is a preset name unless it contains a path separator or ends in ".json"."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, Mapping):
        return Target(dict(spec), name="custom", source="<dict>")
    if isinstance(spec, str) and _looks_like_preset_name(spec):
        return _load_preset(spec)
    if isinstance(spec, (str, os.PathLike)):
        return _load_file(Path(spec))
    raise TargetError(f"a target is a preset name, a JSON file path, a dict or a Target, got {type(spec).__name__}")


def _looks_like_preset_name(spec: str) -> bool:
    separators = {"/", os.sep, os.altsep} - {None}
    return not spec.endswith(".json") and not any(separator in spec for separator in separators)


def _load_preset(name: str) -> Target:
    names = preset_names()
    if name not in names:
        raise TargetError(f"unknown target preset {name!r}; available: {', '.join(names)} "
                          "(a file path needs a path separator or a .json suffix)")
    return Target(_parse_json((_PRESETS / f"{name}.json").read_text(encoding="utf-8"), name), name=name)


def _load_file(path: Path) -> Target:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetError(f"target file '{path}' not found") from None
    except UnicodeDecodeError:
        raise TargetError(f"target file '{path}' is not UTF-8 text") from None
    except OSError as error:
        raise TargetError(f"target file '{path}' could not be read: {error.strerror}") from None
    return Target(_parse_json(text, str(path)), name=path.stem, source=str(path))


def _parse_json(text: str, source: str) -> object:
    """The JSON value in ``text``; a TargetError with line and column if it is malformed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TargetError(f"target {source!r}: malformed JSON at line {error.lineno}, column {error.colno}: "
                          f"{error.msg}") from None
