"""``python -m edge_agent``: same as the ``edge-agent`` console script."""

from edge_agent.app.cli import main

raise SystemExit(main())
