"""The options every VTP tool shares (which weights, which device), with the original's equivalent named in
each help text, so that ``python -m vtp_tools.eval`` and ``python -m vtp_tools.extract`` say the same thing."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, *, original_weights: str, original_device: str) -> None:
    """--weights, --require-weights and --device. ``original_*``: how the original tool sets the same thing."""
    parser.add_argument("--weights", default=None,
                        help="checkpoint folder (default: weights/VTP-Small-f16d64, synthetic weights with a notice "
                             f"when absent; original: {original_weights})")
    parser.add_argument("--require-weights", action="store_true",
                        help="a missing checkpoint is an error, not synthetic weights (default: off; the original "
                             f"always needs {original_weights})")
    parser.add_argument("--device", default="auto",
                        help="auto|npu|npu:N|cuda|cuda:N|cpu (default: auto = NPU > CUDA > CPU; under torchrun each "
                             f"process takes its LOCAL_RANK device; original: {original_device})")
