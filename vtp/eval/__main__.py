"""``python -m vtp.eval``: the same command as ``python -m vtp_tools.eval``."""

# Command shim kept for users who run `python -m vtp.eval`; the tool itself is vtp_tools.eval.
if __name__ == "__main__":
    from vtp_tools.eval.cli import main

    raise SystemExit(main())
