"""``python -m vtp.eval``: see :mod:`vtp.eval.cli`."""

from ascend.npu import prepare_environment

prepare_environment()  # before torch is imported: a torch_npu install without CANN must not break import torch

from vtp.eval.cli import main  # noqa: E402

raise SystemExit(main())
