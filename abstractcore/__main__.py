"""``python -m abstractcore``: the same command line as the ``abstractcore`` script."""

from abstractcore.cli import main

raise SystemExit(main())
