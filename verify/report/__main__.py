"""``python -m verify.report RUN``: print the verdict table of a run (see verify.report.cli)."""

import sys

from verify.report.cli import main

sys.exit(main())
