"""``python -m abstractcore.server``: the same as ``abstractcore serve``."""

from abstractcore.server.serve_command import main

raise SystemExit(main())
