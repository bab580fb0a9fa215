"""Flags generated from a settings class: one per field, typed, overriding the environment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shell.cli import add_settings_arguments, given, parse_bool


class _Demo(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    slo_ms: float = Field(default=100.0, description="latency SLO")
    policy: Literal["a", "b"] = Field(default="a", description="policy")
    db_path: Path | None = Field(default=None, description="where")
    verbose: bool = Field(default=False, description="chatty")
    hidden: int = 3


def _parser(skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_settings_arguments(p, _Demo, skip=skip)
    return p


def test_each_field_becomes_a_typed_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_SLO_MS", "50")
    ns = _parser().parse_args(["--policy", "b", "--db-path", "x.db", "--verbose", "yes"])
    s = _Demo(**given(ns))
    assert (s.slo_ms, s.policy, s.db_path, s.verbose) == (50.0, "b", Path("x.db"), True)
    assert _Demo(**given(_parser().parse_args(["--slo-ms", "20"]))).slo_ms == 20.0


def test_bad_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--policy", "c"])
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_skipped_fields_have_no_flag() -> None:
    with pytest.raises(SystemExit):
        _parser(skip=("hidden",)).parse_args(["--hidden", "4"])
    assert given(_parser().parse_args(["--hidden", "4"]), skip={"hidden"}) == {}
