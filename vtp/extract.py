"""``python -m vtp.extract``: the same command as ``python -m vtp_tools.extract``."""

# Command shim kept for users who run `python -m vtp.extract`; the tool itself is vtp_tools.extract.
if __name__ == "__main__":
    from vtp_tools.extract import main

    raise SystemExit(main())
