"""``python -m vtp_tools.eval``: see :mod:`vtp_tools.eval.cli`."""

from vtp_tools.eval.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
