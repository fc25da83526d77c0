"""``python -m evalkit.cli``: the command line (``python -m evalkit`` also stops cleanly while starting)."""

import sys

from evalkit.cli import main

sys.exit(main())
