"""``python -m verify.server``: see verify.server (the package docstring) and verify.server.cli."""

import sys

from verify.server.cli import main

sys.exit(main())
