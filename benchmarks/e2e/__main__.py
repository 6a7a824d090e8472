"""``python -m benchmarks.e2e``: see the package docstring and ``--help``."""

import sys

from .runner import main

sys.exit(main())
