"""``python -m simulators`` is ``fleet-sim``."""

import sys

from simulators.cli import main

sys.exit(main())
