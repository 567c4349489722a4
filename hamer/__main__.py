"""``python -m hamer``: the ``hamer`` command line."""

from .cli import main

raise SystemExit(main())
