"""The four CLIs keep the command line recorded in cli_inventory.json (from main).

A deliberate change (a new settings field, ``--no-x`` for booleans) must show up as
a reviewed edit of the fixture, never as a silent drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shell.cli_inventory import PROGRAMS, inventory

_FIXTURE = json.loads(Path(__file__).with_name("cli_inventory.json").read_text())


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_cli_matches_recorded_inventory(program: str) -> None:
    assert inventory(PROGRAMS[program]()) == _FIXTURE[program]


def test_inventory_sees_subcommands() -> None:
    # Guards the walker itself: an inventory blind to subcommands would pass vacuously.
    fleet = _FIXTURE["cloud-gateway"]["commands"]["fleet"]["commands"]
    assert {"enrol", "revoke"} <= set(fleet)
