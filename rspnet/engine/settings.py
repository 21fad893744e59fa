"""Each setting defined once: a config dataclass's field (``setting``) carries
its default, help, flag group, argparse type and unit, whether a resumed run
may change it, and the command-line default when that depends on the machine.
From the fields come the flags (``add_flags``), the config of a command line
(``config_from_args``), config files and named presets (``load_config``),
the provenance kept with a run (``plain``) and ``resumable_changes``.

A config file is JSON or YAML: a mapping of field names to values, or a
run's own record holding one under ``"config"`` (``summary.json``,
``metrics.json``), so that a run's saved config reproduces it. Flags given
on the command line override the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Flag", "setting", "add_flags", "config_from_args", "load_config", "flag_name", "resumable_changes",
           "preset_names", "PRESETS_DIR"]

PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line."""
    help: str
    group: str = "settings"
    type: Callable[[str], Any] | None = None   # argparse type; default from the annotation
    choices: Sequence[Any] | None = None
    metavar: str | tuple[str, ...] | None = None
    nargs: int | str | None = None
    scale: float = 1.0            # the flag's unit: field value = flag value * scale (M params, GFLOPs)
    resumable: bool = False       # may change when a run is resumed (changes no number it computes)
    cli_default: Callable[[dict[str, Any]], Any] | None = None   # default from the other values


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A config field with its flag (``Flag``'s arguments)."""
    return field(default=default, metadata={"flag": Flag(help=help, **flag)})


def finite_float(text: str) -> float:
    """A float flag: NaN and infinity are no setting's value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag(f: dataclasses.Field) -> Flag:
    found = f.metadata.get("flag")
    if found is None:
        raise TypeError(f"config field {f.name!r} is not declared with rspnet.engine.settings.setting")
    return found


def _base_type(annotation: Any) -> Any:
    """``int`` of ``int | None``; the annotation itself otherwise."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})   # postponed annotations (from __future__)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _show(value: Any, scale: float) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "x".join(map(str, value)) if len(value) == 2 and all(isinstance(v, int) for v in value) \
            else ",".join(map(str, value))
    return f"{value / scale:g}" if scale != 1 and isinstance(value, (int, float)) else str(value)


def add_flags(parser: argparse.ArgumentParser, config_type: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of ``config_type`` (except ``skip``), grouped; every
    default is ``argparse.SUPPRESS``, so that ``config_from_args`` sees only
    the flags given (the help shows the field's default)."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(config_type):
        if f.name in skip:
            continue
        flag = _flag(f)
        group = groups.get(flag.group) or groups.setdefault(flag.group, parser.add_argument_group(flag.group))
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        base = _base_type(f.type)
        default = "machine-dependent" if flag.cli_default else _show(f.default, flag.scale)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            element = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
            kwargs["type"] = flag.type or {float: finite_float, int: int, str: str}.get(element, str)
            for key in ("choices", "metavar", "nargs"):
                if getattr(flag, key) is not None:
                    kwargs[key] = getattr(flag, key)
        # a help that says its own default (one that depends on other settings) is shown as written
        text = flag.help if flag.cli_default and "(default:" in flag.help else f"{flag.help} (default: {default})"
        group.add_argument(flag_name(f.name), help=text, **kwargs)


def config_from_args(config_type: type, args: argparse.Namespace, file_values: Mapping[str, Any] = ()) -> Any:
    """The config of a command line: the defaults, then ``file_values`` (a
    ``--config``'s, ``load_config``), then every flag given, in the field's
    unit; a field set by none of them gets its ``cli_default``."""
    values = dict(file_values)
    for f in dataclasses.fields(config_type):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            scale = _flag(f).scale
            if isinstance(value, list):
                value = tuple(value)
            values[f.name] = value * scale if scale != 1 and value is not None else value
    for f in dataclasses.fields(config_type):
        if f.name not in values and _flag(f).cli_default is not None:
            values[f.name] = _flag(f).cli_default({**_defaults(config_type), **values})
    return config_type(**values)


def _defaults(config_type: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(config_type)}


def resumable_changes(config_type: type) -> tuple[str, ...]:
    """The fields a resumed run may change (they change no number it computes)."""
    return tuple(f.name for f in dataclasses.fields(config_type) if _flag(f).resumable)


def preset_names(command: str) -> list[str]:
    """The presets shipped for ``command`` ("search", "train", "evaluate")."""
    directory = os.path.join(PRESETS_DIR, command)
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.splitext(n)[0] for n in os.listdir(directory) if n.endswith((".json", ".yaml")))


def _UniqueKeyLoader():
    """YAML's safe loader, refusing a key given twice (the last would win
    silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"{', '.join(repeated)} given twice",
                                                        node.start_mark)
            return super().construct_mapping(node, deep)
    return Loader


def _read_mapping(path: str) -> tuple[Mapping[str, Any], bool]:
    """The settings of a file, and whether it is a run's own record."""
    from rspnet.files import parse_json, read_small_text

    text = read_small_text(path, "file")
    if path.endswith((".yaml", ".yml")):
        import yaml
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader())
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {' '.join(str(exc).split())}") from None
        except RecursionError:
            raise ValueError("nested too deeply to be a settings file") from None
    else:
        loaded = parse_json(text, "file", path)
    record = isinstance(loaded, dict) and isinstance(loaded.get("config"), dict)
    if record:
        loaded = loaded["config"]   # a run's own record: summary.json, metrics.json
    if not isinstance(loaded, dict):
        raise ValueError("expected a mapping of setting names to values")
    return loaded, record


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """A file's value as the field's type (lists to tuples; no NaN or
    infinity: no setting means one), or ``ValueError``."""
    value = _checked_value(f, value)
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{f.name}: must be finite, got {item!r}")
    if value is not None:
        _flag_check(f, value)
    return value


def _flag_check(f: dataclasses.Field, value: Any) -> None:
    """A file's value passes the checks its flag's value gets: the choices and
    the argparse type (a positive count, an HxW multiple of 32, ...)."""
    flag = _flag(f)
    items = value if flag.nargs is not None and isinstance(value, tuple) else (value,)
    for item in items:
        if flag.choices is not None and item not in flag.choices:
            raise ValueError(f"{f.name}: {item!r} is not one of {', '.join(map(str, flag.choices))}")
    if flag.type is None:
        return
    if flag.nargs is not None:
        texts = [str(item) for item in items]
    elif isinstance(value, tuple):
        texts = ["x".join(map(str, value)) if flag.metavar is None else ",".join(map(str, value))]
    else:
        texts = [str(value)]
    for text in texts:
        try:
            flag.type(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ValueError(f"{f.name}: {exc}") from None


def _checked_value(f: dataclasses.Field, value: Any) -> Any:
    base = _base_type(f.type)
    if value is None:
        if f.default is not None and _flag(f).cli_default is None:
            raise ValueError(f"{f.name}: may not be null")
        return None
    origin = typing.get_origin(base) or base
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{f.name}: expected a list, got {value!r}")
        args = typing.get_args(base)
        fixed = len(args) if args and args[-1] is not Ellipsis else None
        if fixed is not None and len(value) != fixed:
            raise ValueError(f"{f.name}: expected a list of {fixed}, got {len(value)} ({list(value)!r})")
        kind = args[0] if args else None
        for item in value:
            if kind in (int, float) and (isinstance(item, bool) or not isinstance(item, (int, float))
                                         or (kind is int and not isinstance(item, int))):
                raise ValueError(f"{f.name}: expected numbers ({kind.__name__}), got {item!r}")
        return tuple(float(v) if kind is float else v for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):   # YAML 1.1 reads 1.5e8 (no sign) as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{f.name}: expected float, got {value!r}") from None
    if base in (int, float, str, bool) and not (isinstance(value, base) and
                                                  (base is bool or not isinstance(value, bool))):
        raise ValueError(f"{f.name}: expected {base.__name__}, got {value!r}")
    return value


def load_config(config_type: type, spec: str, command: str) -> dict[str, Any]:
    """The settings of ``spec``, a preset name of ``command`` or a JSON / YAML
    file, checked against ``config_type``'s fields and types: ``ValueError``
    naming ``--config`` and the setting for anything wrong."""
    path = spec
    if not os.path.exists(spec) and spec in preset_names(command):
        found = [os.path.join(PRESETS_DIR, command, spec + ext) for ext in (".json", ".yaml")]
        path = next(p for p in found if os.path.exists(p))
    try:
        mapping, record = _read_mapping(path)
    except FileNotFoundError:
        names = ", ".join(preset_names(command)) or "none"
        raise ValueError(f"--config {spec}: no such file or preset (presets: {names})") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config {spec}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(f"--config {spec}: unknown setting(s) {', '.join(unknown)}")
    try:
        values = {k: _coerce(fields[k], v) for k, v in mapping.items()}
    except ValueError as exc:
        raise ValueError(f"--config {spec}: {exc}") from None
    if record:
        values.update(_absent_from_record(config_type, values))
    return values


def _absent_from_record(config_type: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """A run's record lacks a setting only when the run was made before the
    setting existed, so the run computed what the setting's plain default
    computes: that default, not the machine- or data-dependent one a command
    line gets (an old CamVid record without ``optimizer`` ran SGD, and its
    lr of 0.05 would make Adam diverge). Settings a resumed run may change
    (device, threads, ...) still follow the machine."""
    out = {}
    for f in dataclasses.fields(config_type):
        flag = _flag(f)
        if f.name not in values and flag.cli_default is not None and not flag.resumable and f.default is not None:
            out[f.name] = f.default
    return out
