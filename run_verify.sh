#!/usr/bin/env bash
# Certify VTP on this machine: environment check -> inference demo -> accuracy + timing -> verdict.
# The one entry point for people and CI; `bash run_verify.sh --help` explains the options.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash run_verify.sh [--device D] [--weights DIR] [--precision fp32|fp16|bf16] [--fusion SPEC]
                          [--quick] [--no-timing] [--require-weights] [--out DIR] [--inject-fault SPEC]

Certify the VTP port on this machine, in three steps:
  1. environment check  python -m verify.env_check        (Python, torch, torch_npu/CANN, device, weights, disk)
  2. inference demo     python ascend/inference.py        (reconstruction, CLIP zero-shot, SSL features)
  3. accuracy + timing  python verify/accuracy_eval.py    (candidate vs the CPU fp32 reference, thresholds)
then print the verdict table from accuracy_summary.json (python -m verify.report).

options:
  --device D           auto (NPU > CUDA > CPU, default), npu, npu:N, cuda, cuda:N or cpu
  --weights DIR        checkpoint folder (default weights/VTP-Small-f16d64 when present, else synthetic
                       VTP-Small weights with a NOTICE)
  --precision P        fp32 (default, strict: no TF32/HF32), fp16 or bf16 (autocast)
  --fusion SPEC        fused-operator rules: all (default), none, a comma list (gelu,layernorm) or a YAML file
  --quick              fewer images and timed iterations, no cold-process load timing (minutes -> seconds)
  --no-timing          accuracy only, no latency measurement
  --require-weights    a missing checkpoint is an error (exit 2) instead of synthetic weights
  --out DIR            where every output goes (default verify_out/<timestamp>):
                         log.txt, console.txt, env.json, output/reconstructed.png,
                         accuracy_summary.json, fusion_result.json
                       (a reused folder: earlier results are removed, log.txt and console.txt appended)
  --inject-fault SPEC  harness self-test: perturb one module's output on the candidate only, MODULE=FACTOR or
                       MODULE=nan (e.g. trunk.blocks.0=1.02); a sound harness must then FAIL (exit 1)
  -h, --help           show this help

Relative paths are taken from the current directory. The interpreter is $PYTHON, else `python` on PATH.

examples:
  bash run_verify.sh --device npu --require-weights --weights weights/VTP-Small-f16d64 --out verify_out/npu
  bash run_verify.sh --device cpu --quick
  bash run_verify.sh --device npu:0 --precision bf16 --fusion none

exit status:
  0  PASS: the environment is ready, the demo ran, every accuracy check passed
  1  verification FAILED: an accuracy check failed, or the demo or the evaluation crashed or gave NaN/Inf
     on a working environment
  2  environment or usage error: unknown option, environment check failed, missing weights, bad device
EOF
}

usage_error() {
    printf 'run_verify.sh: %s\n' "$1" >&2
    printf "Try 'bash run_verify.sh --help'.\n" >&2
    exit 2
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

DEVICE="auto"
WEIGHTS=""
PRECISION="fp32"
FUSION="all"
QUICK=0
NO_TIMING=0
REQUIRE_WEIGHTS=0
OUT=""
FAULT=""

while (($#)); do
    opt="$1"
    has_value=0
    value=""
    if [[ "$opt" == --*=* ]]; then
        value="${opt#*=}"
        opt="${opt%%=*}"
        has_value=1
    fi
    case "$opt" in
        --device | --weights | --precision | --fusion | --out | --inject-fault)
            if ((!has_value)); then
                (($# >= 2)) || usage_error "option $opt needs a value"
                value="$2"
                shift
            fi
            [[ -n "$value" ]] || usage_error "option $opt needs a non-empty value"
            case "$opt" in
                --device) DEVICE="$value" ;;
                --weights) WEIGHTS="$value" ;;
                --precision) PRECISION="$value" ;;
                --fusion) FUSION="$value" ;;
                --out) OUT="$value" ;;
                --inject-fault) FAULT="$value" ;;
            esac
            ;;
        --quick | --no-timing | --require-weights)
            ((!has_value)) || usage_error "option $opt takes no value"
            case "$opt" in
                --quick) QUICK=1 ;;
                --no-timing) NO_TIMING=1 ;;
                --require-weights) REQUIRE_WEIGHTS=1 ;;
            esac
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            usage_error "unknown option: $1"
            ;;
    esac
    shift
done

case "$PRECISION" in
    fp32 | fp16 | bf16) ;;
    *) usage_error "--precision must be fp32, fp16 or bf16, got '$PRECISION'" ;;
esac
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    printf 'run_verify.sh: no Python interpreter: %s is not on PATH (set PYTHON=/path/to/python)\n' "$PYTHON" >&2
    exit 2
fi

if [[ -z "$OUT" ]]; then
    OUT="verify_out/$(date +%Y%m%d-%H%M%S)"
    [[ ! -e "$OUT" ]] || OUT="$OUT-$$"
fi
mkdir -p "$OUT" || { printf 'run_verify.sh: cannot create the output folder %s\n' "$OUT" >&2; exit 2; }
# A reused --out folder: results of an earlier run must not pass for this run's (log.txt and console.txt
# are appended to, one header per run).
rm -f "$OUT/env.json" "$OUT/accuracy_summary.json" "$OUT/fusion_result.json" "$OUT/output/reconstructed.png"
LOG="$OUT/log.txt"
CONSOLE="$OUT/console.txt"

# The package is imported from this checkout, whatever the current directory (no install needed).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
    BOLD=$'\033[1m' GREEN=$'\033[32m' RED=$'\033[31m' RESET=$'\033[0m'
else
    BOLD="" GREEN="" RED="" RESET=""
fi

# One line to the terminal, log.txt and console.txt. Each append opens and closes the file, because
# verify/accuracy_eval.py rewrites log.txt atomically (os.replace) and a file held open would miss that.
say() {
    printf '%s\n' "$*"
    printf '%s\n' "$*" >>"$LOG"
    printf '%s\n' "$*" >>"$CONSOLE"
}

step() {
    say ""
    say "===== run_verify.sh step $1 ($(date '+%Y-%m-%d %H:%M:%S')) ====="
}

common=(--device "$DEVICE")
[[ -z "$WEIGHTS" ]] || common+=(--weights "$WEIGHTS")
((!REQUIRE_WEIGHTS)) || common+=(--require-weights)

say "===== run_verify.sh $(date '+%Y-%m-%d %H:%M:%S'): device=$DEVICE precision=$PRECISION fusion=$FUSION" \
    "weights=${WEIGHTS:-default} quick=$QUICK out=$OUT ====="
[[ -z "$FAULT" ]] || say "harness self-test: --inject-fault $FAULT (the candidate is perturbed on purpose: expect FAIL)"

# ---- 1. environment ------------------------------------------------------------------------------
step "1/3: environment check"
env_rc=0
"$PYTHON" -m verify.env_check "${common[@]}" --out "$OUT" --json "$OUT/env.json" 2>&1 |
    tee -a "$CONSOLE" "$LOG" || env_rc=$?
if ((env_rc != 0)); then
    say "environment check failed (exit $env_rc): fix the problems listed above, then run again"
    say "outputs: $OUT (log.txt, env.json)"
    exit 2
fi

# ---- 2. inference demo ---------------------------------------------------------------------------
# ascend/inference.py appends its own lines to log.txt; the terminal copy goes to console.txt.
step "2/3: inference demo"
demo_rc=0
"$PYTHON" "$ROOT/ascend/inference.py" "${common[@]}" --precision "$PRECISION" --fusion "$FUSION" \
    --out "$OUT/output" --log "$LOG" 2>&1 | tee -a "$CONSOLE" || demo_rc=$?
if ((demo_rc == 2)); then
    say "inference demo: environment or usage error (exit 2): see the error above"
    say "outputs: $OUT (log.txt, env.json)"
    exit 2
fi
# A demo that crashes or gives NaN/Inf on an environment that passed step 1 is a verification failure;
# the accuracy step still runs, so that its table shows where the outputs go wrong.
((demo_rc == 0)) || say "inference demo FAILED (exit $demo_rc): see the error above; continuing with the accuracy step"

# ---- 3. accuracy and timing ----------------------------------------------------------------------
step "3/3: accuracy and timing"
# --quiet: the evaluation writes its table to log.txt; the terminal gets it once, below, from verify.report
eval_args=("${common[@]}" --precision "$PRECISION" --fusion "$FUSION" --out "$OUT" --quiet)
((!QUICK)) || eval_args+=(--quick)
((!NO_TIMING)) || eval_args+=(--no-timing)
[[ -z "$FAULT" ]] || eval_args+=(--inject-fault "$FAULT")
eval_rc=0
"$PYTHON" "$ROOT/verify/accuracy_eval.py" "${eval_args[@]}" 2>&1 | tee -a "$CONSOLE" || eval_rc=$?

# ---- verdict ---------------------------------------------------------------------------------------
say ""
say "===== run_verify.sh verdict ====="
if [[ -f "$OUT/accuracy_summary.json" && $eval_rc -ne 2 ]]; then
    "$PYTHON" -m verify.report "$OUT" 2>&1 | tee -a "$CONSOLE" || true
fi

case "$demo_rc" in 0) demo_text="OK" ;; *) demo_text="FAILED (exit $demo_rc)" ;; esac
case "$eval_rc" in
    0) eval_text="PASS" ;;
    1) eval_text="FAIL" ;;
    2) eval_text="ERROR: environment or usage (exit 2)" ;;
    *) eval_text="CRASHED (exit $eval_rc)" ;;
esac
if ((eval_rc == 2)); then
    status=2
elif ((demo_rc != 0 || eval_rc != 0)); then
    status=1
else
    status=0
fi
case "$status" in
    0) verdict="${GREEN}${BOLD}PASS${RESET}" plain="PASS" ;;
    1) verdict="${RED}${BOLD}FAIL${RESET}" plain="FAIL" ;;
    *) verdict="${RED}${BOLD}ERROR${RESET}" plain="ERROR (environment or usage)" ;;
esac

say ""
say "step                  result"
say "environment check     OK"
say "inference demo        $demo_text"
say "accuracy and timing   $eval_text"
printf 'VERDICT: %s\n' "$verdict"
printf 'VERDICT: %s\n' "$plain" >>"$LOG"
printf 'VERDICT: %s\n' "$plain" >>"$CONSOLE"
say "outputs: $OUT"
for name in log.txt console.txt env.json output/reconstructed.png accuracy_summary.json fusion_result.json; do
    [[ ! -e "$OUT/$name" ]] || say "  $OUT/$name"
done
exit "$status"
