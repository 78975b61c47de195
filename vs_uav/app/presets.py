"""Presets: named, versioned TOML files of settings, shipped ones and the user's own.

A preset file holds only what differs from the defaults of the settings model::

    schema_version = 1
    description = "What it is for"

    [upscale]
    noise_level = 150

    [encoder]
    codec = "ffv1"

Shipped presets live in ``presets/`` (in a wheel: ``vs_uav/data/presets/``); the user's in
``platformdirs.user_config_dir('vs-uav')/presets`` (or ``$UAV_CONFIG_DIR/presets``) and
override shipped ones of the same name. Loading is all or nothing: any bad key or value
raises :class:`PresetError` with one line naming the file, the key, the value and what
is accepted. This module must not import torch (the GUI uses it).
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import tomli_w

from vs_uav.errors import UavError
from vs_uav.media.encoder import ENCODER_SETTINGS, EncoderSettings
from vs_uav.settings import SETTINGS, Setting, UpscaleSettings
from vs_uav.untrusted import control_character, escaped, nesting_depth

logger = logging.getLogger("vs_uav.app.presets")

SCHEMA_VERSION = 1
TABLES: dict[str, tuple[Setting, ...]] = {"upscale": SETTINGS, "encoder": ENCODER_SETTINGS}
_TOP_KEYS = ("schema_version", "description", "upscale", "encoder")
# Names become file names: no separators, nothing hidden, nothing a shell or Windows dislikes.
_NAME = re.compile(r"^[\w][\w .+-]{0,63}$")
# Written even at their defaults: a preset pins its recipe if a default changes later.
_ALWAYS = frozenset({"steps", "guidance_scale", "noise_level", "propagation_steps", "codec"})

Origin = Literal["shipped", "user", "file", "new"]
PathLike = Union[str, os.PathLike]


class PresetError(UavError, ValueError):
    """A preset that cannot be used; the message is one line naming file, key, value, accepted."""


@dataclass
class Preset:
    """A named set of filter and encoder settings. Equality ignores where it came from."""

    name: str
    settings: UpscaleSettings = field(default_factory=UpscaleSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    description: str = ""
    origin: Origin = field(default="new", compare=False)
    path: Optional[Path] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        _check_text(self.description, "description")

    def values(self, table: str) -> dict[str, Any]:
        """Every value of one table ('upscale' or 'encoder'), defaults included."""
        obj = self.settings if table == "upscale" else self.encoder
        return {s.name: getattr(obj, s.name) for s in TABLES[table]}


# A preset is two tables of flat values: anything deeper is no preset (and Python's TOML reader
# recurses: 5,000 levels are a RecursionError).
MAX_DEPTH = 8


def _check_text(text: str, what: str) -> None:
    """PresetError in one line for a control character in a preset's text (NUL, CR, ...): it
    would reach a script's comment or a file name. A description may hold line breaks."""
    bad = control_character(text, allowed="\n\t")
    if bad is not None:
        raise PresetError(f"{what} holds the control character {bad}; accepted: printable text (and line breaks)")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.rstrip(" .") != name:
        raise PresetError(f"preset name {name!r}; accepted: 1-64 letters, digits, spaces, '_', '-', '+', '.', "
                          "starting with a letter or digit")
    return name


# -- where presets live ------------------------------------------------------------------------

def shipped_dir() -> Path:
    """The shipped presets: in a wheel vs_uav/data/presets/ (pyproject maps them), else the checkout's."""
    here = Path(__file__).resolve().parents[1]  # the vs_uav package
    for candidate in (here / "data" / "presets", here.parent / "presets"):
        if candidate.is_dir():
            return candidate
    return here / "data" / "presets"  # a broken install: reported as "no shipped presets" by callers


def config_dir() -> Path:
    """The user's configuration folder; $UAV_CONFIG_DIR overrides it (tests, portable setups)."""
    env = os.environ.get("UAV_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("vs-uav"))


def user_dir() -> Path:
    return config_dir() / "presets"


def available() -> dict[str, tuple[Origin, Path]]:
    """Every preset by name, sorted; a user preset hides the shipped one of the same name."""
    found: dict[str, tuple[Origin, Path]] = {}
    for origin, folder in (("shipped", shipped_dir()), ("user", user_dir())):
        if folder.is_dir():
            for path in folder.glob("*.toml"):
                found[path.stem] = (origin, path)  # type: ignore[assignment]
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def is_shipped(name: str) -> bool:
    return (shipped_dir() / f"{name}.toml").is_file()


# -- reading -------------------------------------------------------------------------------------

def _rename(table: Any, old: str, new: str) -> None:
    if isinstance(table, dict) and old in table and new not in table:
        table[new] = table.pop(old)


def _migrate_0(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 called the x265/x264 speed preset [encoder] 'preset' (now 'speed', since
    'preset' names a vs-uav preset) and [upscale] 'guidance_scale' 'guidance' (the
    official script's option name)."""
    _rename(data.get("encoder"), "preset", "speed")
    _rename(data.get("upscale"), "guidance", "guidance_scale")
    return data


# Migration from schema N to N + 1, applied in order: every old file still loads.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0}


def _accepted(specs: tuple[Setting, ...]) -> str:
    return ", ".join(s.name for s in specs)


def parse(text: str, file: PathLike = "<preset>", name: Optional[str] = None,
          origin: Origin = "file") -> Preset:
    """A preset from TOML text; ``file`` only names it in error messages."""
    where = escaped(str(file))
    name = name if name is not None else Path(str(file)).stem
    if nesting_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise PresetError(f"{where}: tables or arrays nested more than {MAX_DEPTH} deep; accepted: a preset "
                          "([upscale], [encoder] and their values)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{where}: not valid TOML: {e}; accepted: a TOML file") from None

    version = data.get("schema_version")
    if version is None:
        raise PresetError(f"{where}: schema_version missing; accepted: an integer in [0, {SCHEMA_VERSION}]")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise PresetError(f"{where}: schema_version={version!r}; accepted: an integer in [0, {SCHEMA_VERSION}]")
    if version > SCHEMA_VERSION:
        raise PresetError(f"{where}: schema_version={version}; accepted: up to {SCHEMA_VERSION} (the file is "
                          f"from a newer vs-uav: upgrade vs-uav to use it)")
    for v in range(version, SCHEMA_VERSION):
        data = MIGRATIONS[v](data)
        logger.info("%s: migrated preset from schema %d to %d", where, v, v + 1)

    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise PresetError(f"{where}: unknown key {key}={value!r}; accepted: schema_version, description, "
                              "[upscale], [encoder]")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PresetError(f"{where}: description={description!r}; accepted: a string")
    _check_text(description, f"{where}: description")

    built: dict[str, Any] = {}
    for table, specs in TABLES.items():
        values = data.get(table, {})
        if not isinstance(values, dict):
            raise PresetError(f"{where}: {table}={values!r}; accepted: a table [{table}]")
        by_name = {s.name: s for s in specs}
        for key, value in values.items():
            if key not in by_name:
                raise PresetError(f"{where}: unknown key {table}.{key}={value!r}; accepted: {_accepted(specs)}")
            try:
                by_name[key].check(value)
            except ValueError as e:
                raise PresetError(f"{where}: {table}.{e}") from None
        cls = UpscaleSettings if table == "upscale" else EncoderSettings
        try:
            built[table] = cls(**values)  # cross-field checks (e.g. propagation_steps < steps)
        except ValueError as e:
            raise PresetError(f"{where}: {table}.{e}") from None
    try:
        return Preset(name, built["upscale"], built["encoder"], description, origin,
                      Path(where) if origin != "new" else None)
    except PresetError as e:
        raise PresetError(f"{where}: {e}") from None


def load(name_or_path: PathLike) -> Preset:
    """A preset by name (user first, then shipped) or from a .toml file."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise PresetError(f"{path}: preset file not found; accepted: an existing .toml file")
        origin: Origin = "file"
        if path.resolve().parent == user_dir().resolve():
            origin = "user"
        elif path.resolve().parent == shipped_dir().resolve():
            origin = "shipped"
        return parse(_read(path), path, path.stem, origin)
    found = available()
    if text not in found:
        raise PresetError(f"unknown preset {text!r}; accepted: {', '.join(found) or '(none found)'} "
                          "or a .toml file")
    origin, path = found[text]
    return parse(_read(path), path, text, origin)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: cannot be read: {e}; accepted: a UTF-8 TOML file") from None


# -- writing -------------------------------------------------------------------------------------

def _toml_line(key: str, value: Any) -> str:
    """``key = value``, written by tomli_w; an array kept on one line as the shipped files have it
    (tomli_w puts each item on a line of its own)."""
    if isinstance(value, (list, tuple)):
        return f"{key} = [{', '.join(_toml_item(v) for v in value)}]"
    return tomli_w.dumps({key: value}).rstrip("\n")


def _toml_item(value: Any) -> str:
    """One array item, as tomli_w writes a value."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def dumps(preset: Preset) -> str:
    """The canonical TOML text of a preset: the recipe's core and what differs from the defaults."""
    lines = [f"# vs-uav preset '{preset.name}'. Keys and ranges: `uav script --help`.",
             _toml_line("schema_version", SCHEMA_VERSION),
             _toml_line("description", preset.description)]
    for table, specs in TABLES.items():
        values = preset.values(table)
        lines += ["", f"[{table}]"]
        lines += [_toml_line(s.name, values[s.name]) for s in specs
                  if s.name in _ALWAYS or values[s.name] != s.default]
    return "\n".join(lines) + "\n"


def save(preset: Preset, path: Optional[PathLike] = None) -> Path:
    """Write a preset (by default to the user folder, under its name); atomically."""
    target = Path(path) if path is not None else user_dir() / f"{check_name(preset.name)}.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(dumps(preset), encoding="utf-8")
    tmp.replace(target)  # a crash never leaves a half-written preset under its name
    logger.info("saved preset %s to %s", preset.name, target)
    return target


def delete(name: str) -> Path:
    """Delete a user preset; a shipped preset of the same name becomes visible again."""
    path = user_dir() / f"{check_name(name)}.toml"
    if not path.is_file():
        if is_shipped(name):
            raise PresetError(f"preset {name!r} is shipped with vs-uav and cannot be deleted; accepted: a user "
                              f"preset in {user_dir()}")
        raise PresetError(f"unknown preset {name!r}; accepted: {', '.join(available())}")
    path.unlink()
    return path
