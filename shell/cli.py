"""Command-line flags generated from a pydantic-settings class, one flag per field.

Every process follows one rule: the flag ``--foo-bar`` is the settings field ``foo_bar``
and the environment variable ``PREFIX_FOO_BAR``; a flag given on the command line wins.
Generating the flags from the settings class means the two can never drift (and the
deploy manifests are checked against both). Shared here because ``models`` is the lowest
package every process depends on.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Container
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already says its default
    or that it is required (flags of one request, which have no environment variable)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        low = text.lower()
        if (
            not action.option_strings
            or "default" in low
            or "required" in low
            or action.default in (None, argparse.SUPPRESS, False, [])
            or action.required
        ):
            return text
        return f"{text} (default: %(default)s)"


def parse_bool(text: str) -> bool:
    """argparse type for booleans: true/false, yes/no, on/off, 1/0."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _arg_kwargs(annotation: Any) -> dict[str, Any]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, type(int | None))
    if optional and len(args) > 1:
        # A choice of types (``int | Literal["auto"]``): the text goes to pydantic as is,
        # which validates it exactly as it does the environment variable.
        return {"type": str}
    base = args[0] if optional and args else annotation
    if typing.get_origin(base) is list:
        return {"action": "append", "type": str}  # repeatable flag
    if typing.get_origin(base) is typing.Literal:
        return {"choices": list(typing.get_args(base))}
    if base is bool:
        return {"type": parse_bool, "metavar": "BOOL"}
    if base in (int, float, Path):
        return {"type": base}
    return {"type": str}


def env_name(settings: type[BaseSettings], name: str) -> str:
    """The environment variable of a settings field (``PREFIX_FIELD``)."""
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def _shown_default(field: FieldInfo) -> str:
    factory = field.default_factory
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value == "" or value == () or value == []:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(getattr(value, "value", value))


def settings_help(
    settings: type[BaseSettings],
    name: str,
    description: str | None = None,
    *,
    required: bool = False,
) -> str:
    """Help text of one settings flag: what it is, its default (or that it is required)
    and its environment variable. ``%`` is escaped for argparse."""
    field = settings.model_fields[name]
    text = (description if description is not None else field.description or "").rstrip()
    if required or field.is_required():
        tail = f"required; env {env_name(settings, name)}"
    elif field.default is None and "default" in text.lower():
        tail = f"env {env_name(settings, name)}"  # the description says what None means
    else:
        tail = f"default: {_shown_default(field)}; env {env_name(settings, name)}"
    return f"{text} ({tail})".strip().replace("%", "%%")


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    settings: type[BaseSettings],
    skip: Container[str] = (),
    only: Container[str] | None = None,
    required: Container[str] = (),
) -> None:
    """Add ``--foo-bar`` for every field of ``settings`` (default None = "not given"),
    or for the fields in ``only`` (a subcommand that needs a few of the process's
    settings, e.g. the database of ``cloud-gateway fleet enrol``). ``required`` names
    fields the program checks itself (the help says "required" instead of a default).

    Each help line shows the field's default and environment variable, and the parser
    stops accepting abbreviations: a prefix of one flag must not silently mean it.
    """
    parser.allow_abbrev = False
    for name, field in settings.model_fields.items():
        if name in skip or (only is not None and name not in only):
            continue
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=settings_help(settings, name, required=name in required),
            **_arg_kwargs(field.annotation),
        )


def given(namespace: argparse.Namespace, skip: Container[str] = ()) -> dict[str, Any]:
    """The flags actually given on the command line, as settings overrides."""
    return {k: v for k, v in vars(namespace).items() if v is not None and k not in skip}
