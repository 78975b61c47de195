"""Model and scheduler configs are data read from the model folder (as in diffusers):
small dataclasses built from the official JSON files, refusing keys they do not know."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union

C = TypeVar("C", bound="JsonConfig")


def config_kwargs(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` in an official config dict.

    Keys starting with ``_`` are metadata (``_class_name``, ``_diffusers_version``) and are
    skipped; any other unknown key is refused: a config we do not understand would build a
    different model than the weights expect.
    """
    known = {f.name for f in fields(cls)}
    unknown = [k for k in d if not k.startswith("_") and k not in known]
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key {unknown[0]!r}; accepted: {', '.join(sorted(known))}")
    return {k: v for k, v in d.items() if not k.startswith("_")}


class JsonConfig:
    """``from_dict`` / ``from_json_file`` for the config dataclasses."""

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        return cls(**config_kwargs(cls, d))

    @classmethod
    def from_json_file(cls: type[C], path: Union[str, Path]) -> C:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read config ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
