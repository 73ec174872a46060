"""``python -m tpotserve.backup``: :func:`tpotserve.backup.cli.main`."""

import sys

from .cli import main

sys.exit(main())
