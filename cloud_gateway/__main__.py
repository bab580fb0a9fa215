"""``python -m cloud_gateway`` = ``cloud-gateway``."""

from cloud_gateway.cli import main

raise SystemExit(main())
