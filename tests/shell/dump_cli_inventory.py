"""Regenerate tests/shell/cli_inventory.json: ``python -m tests.shell.dump_cli_inventory``.

Only to be run deliberately, when a flag change is intended; the diff of the JSON is
then the reviewable record of that change.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.shell.cli_inventory import PROGRAMS, inventory


def main() -> None:
    data = {name: inventory(build()) for name, build in PROGRAMS.items()}
    path = Path(__file__).with_name("cli_inventory.json")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
