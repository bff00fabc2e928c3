"""Command shim kept for users: ``python -m vtp.eval`` runs :mod:`vtp_tools.eval` (the tools live above ascend/)."""
