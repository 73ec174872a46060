"""``python -m tpotserve_cli``: the same as the ``tpotserve`` script."""

import sys

from .main import main

sys.exit(main())
