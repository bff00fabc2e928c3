"""Before stage 2: the models of a certification run, made once from the checked options.

`prepare` loads the weights (the reference: unfused, CPU, fp32), expands the profile into the plan
(verify.cases), and builds the candidate (device, fusions, precision, ``--fp32-modules``, an injected
fault), the clean fused CPU copy that splits an error into fusions vs device, and the golden set when
``--reference`` is given. `Setup.close` restores the device's fp32 settings.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger("verify.setup")


@dataclass
class Setup:
    device: object
    thresholds: dict
    reference: object
    identity: dict
    config: object
    plan: object
    tokenizer: object
    first_image: object
    candidate: object = None
    fusion_report: object = None
    cpu_fused: object = None
    candidate_is_cpu_fused: bool = False
    fault: Optional[dict] = None
    golden: object = None
    ascend_options: dict = field(default_factory=dict)
    load_s: float = 0.0
    prepare_s: float = 0.0
    _strict_state: object = None

    def close(self) -> None:
        from ascend.device import restore_fp32_state

        if self._strict_state is not None:
            restore_fp32_state(self._strict_state)
            self._strict_state = None


def prepare(args, opts: dict) -> Setup:
    """The reference, the plan and the candidate for the options `check_options` parsed."""
    import torch

    from ascend.device import ascend_options, set_strict_fp32
    from ascend.fusion import apply_fusions
    from ascend.runtime import default_image, load_weights, prepare_candidate
    from verify.artifacts import GoldenReference
    from verify.cases import build_plan
    from verify.faults import fault_target, inject_fault
    from verify.fp32_modules import apply_fp32_modules
    from vtp.tokenizers import get_tokenizer

    device = opts["device"]
    t = time.perf_counter()
    reference, identity = load_weights(args.weights, require=args.require_weights)
    load_s = time.perf_counter() - t
    config = reference.config
    plan = build_plan(opts["cases"], args.profile, config, prompts=opts["prompts"],
                      batch_sizes=args.batch_sizes or (), sizes=args.sizes or (), fuzz=args.fuzz, seed=args.seed or 0)
    if plan.fuzz:
        logger.info("fuzz: %d cases drawn from the envelope with seed %d (replay: %s)", args.fuzz, args.seed,
                    plan.fuzz["replay"])
    if args.iters is not None:
        plan.iters = args.iters
    if args.warmup is not None:
        plan.warmup = args.warmup
    if args.inject_fault:
        fault_target(reference, args.inject_fault)  # the candidate has the same module names
    for task, why in plan.skipped_tasks.items():
        logger.warning("task %s skipped: %s", task, why)
    setup = Setup(device=device, thresholds=opts["thresholds"], reference=reference, identity=identity,
                  config=config, plan=plan, tokenizer=get_tokenizer(context_length=config.text_context_length),
                  first_image=default_image(args.weights)[0], load_s=load_s,
                  ascend_options=ascend_options(device, allow_internal_format=args.allow_internal_format))
    setup._strict_state = set_strict_fp32(device, True) if args.precision == "fp32" else None
    try:
        t = time.perf_counter()
        setup.candidate, setup.fusion_report = prepare_candidate(
            reference, device, fusion=args.fusion, precision=args.precision,
            record_path=args.out / "fusion_result.json")
        if args.fp32_modules:
            apply_fp32_modules(setup.candidate, opts["fp32_modules"])
        setup.fault = inject_fault(setup.candidate, args.inject_fault) if args.inject_fault else None
        # the fused model on the CPU, clean: splits each error into fusions vs device and precision
        setup.candidate_is_cpu_fused = device.type == "cpu" and args.precision == "fp32" and not setup.fault
        if not setup.candidate_is_cpu_fused:
            setup.cpu_fused = copy.deepcopy(reference)
            apply_fusions(setup.cpu_fused, fusion=args.fusion, device=torch.device("cpu"))
        setup.prepare_s = time.perf_counter() - t
        if args.reference:
            setup.golden = GoldenReference(args.reference, identity, config, plan, device, pin=args.reference_sha256)
            if setup.golden.environment_differences:
                logger.info("golden set %s was made on another environment: %s", args.reference,
                            setup.golden.environment_differences)
    except BaseException:
        setup.close()
        raise
    return setup
