"""``python -m abstractcore.server``: the same as ``abstractcore serve``."""

from abstractcore.server.cli import main

raise SystemExit(main())
