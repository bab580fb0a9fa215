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

from pydantic_settings import BaseSettings


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


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings: type[BaseSettings], skip: Container[str] = ()
) -> None:
    """Add ``--foo-bar`` for every field of ``settings`` (default None = "not given")."""
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=field.description,
            **_arg_kwargs(field.annotation),
        )


def given(namespace: argparse.Namespace, skip: Container[str] = ()) -> dict[str, Any]:
    """The flags actually given on the command line, as settings overrides."""
    return {k: v for k, v in vars(namespace).items() if v is not None and k not in skip}
