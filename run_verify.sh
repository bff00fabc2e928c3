#!/usr/bin/env bash
# Certify VTP on this machine: options check -> environment check -> inference demo -> accuracy + timing ->
# verdict. The one entry point for people and CI; `bash run_verify.sh --help` explains the options.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: bash run_verify.sh [--device D] [--weights DIR] [--precision fp32|fp16|bf16] [--fusion=SPEC]
                          [--profile quick|default|full] [--quick] [--cases FILE] [--thresholds FILE]
                          [--prompt TEXT ...] [--prompts-file FILE] [--no-timing] [--require-weights]
                          [--out DIR] [--inject-fault SPEC] [--nproc N|all] [--locate]
                          [--save-golden DIR] [--reference DIR] [--fp32-modules FILE] [--dataset DIR]
                          [--reference-sha256 HEX] [--golden-source reference|candidate]
                          [--batch-sizes LIST] [--sizes LIST] [--fuzz N] [--seed S]
                          [--level 1|2|3|4] [--burn-in DURATION]

Certify the VTP port on this machine, in three steps (after a check of every option, in seconds):
  1. environment check  python -m verify.env_check        (Python, torch, torch_npu/CANN, device, weights, disk)
  2. inference demo     python ascend/inference.py        (reconstruction, CLIP zero-shot, SSL features)
  3. accuracy + timing  python verify/accuracy_eval.py    (every case of the profile on the candidate and on the
                                                           CPU fp32 reference: calls A, B, A again, warm calls)
then print the verdict table from accuracy_summary.json (python -m verify.report). On a FAIL the first
divergent module is located (python -m verify.locate, divergence.json); report.html shows it all.

options:
  --device D           auto (NPU > CUDA > CPU, default), npu, npu:N, cuda, cuda:N or cpu
  --weights DIR        checkpoint folder (default weights/VTP-Small-f16d64 when present, else synthetic
                       VTP-Small weights with a NOTICE)
  --precision P        fp32 (default, strict: no TF32/HF32), fp16 or bf16 (autocast; also judged against the
                       reference model run on the CPU at the same precision)
  --fusion=SPEC        fused-operator rules: all (default), none, only some (gelu,layernorm), all but some
                       (-gelu,-rope: write it with '=' so that the leading '-' is not read as an option) or a
                       YAML file
  --profile P          cases of verify/cases.yaml: quick, default (the default) or full
  --quick              same as --profile quick: batches 1, 3 and 8; short, long, one and nine prompts; 3 timed
                       calls, no cold-process load timing (budget 45 s on synthetic Small and 2 CPU cores,
                       against 120 s for the default profile; see README)
  --level L            certification level (printed before it starts, recorded in accuracy_summary.json):
                         1 quick    the quick profile (~45 s)
                         2 default  the default profile + device spot checks (~2 min; the default)
                         3 long     the full profile + spot checks + burn-in (15 min on a device, 60 s on the CPU)
                         4 soak     as 3 with a burn-in of --burn-in DURATION
                       (on the CPU levels 3 and 4 run the default profile: the full one takes ~20 min there)
                       from level 3 a card that is right but 1.25x slower than the others (--nproc) fails
  --burn-in DURATION   burn-in length, e.g. 60s, 15m, 2h (level 3: instead of its default; alone: level 4):
                       the certified tasks back to back, every answer checked, memory and latency watched
  --cases FILE         a cases file of your own (schema vtp-cases/1, see verify/cases.yaml)
  --thresholds FILE    a thresholds file of your own (schema vtp-thresholds/2, see verify/thresholds.yaml)
  --prompt TEXT        a prompt of your own, one per option (commas belong to the prompt); repeatable
  --prompts-file FILE  prompts, one per line (UTF-8; blank lines and lines starting with # are ignored)
  --no-timing          accuracy only: no latency measurement (the warm calls still run and are compared)
  --require-weights    a missing checkpoint, or saved synthetic weights, is an error (exit 2)
  --out DIR            where every output goes (default verify_out/<timestamp>):
                         log.txt, console.txt, env.json, output/reconstructed.png, output/input.png,
                         accuracy_summary.json, report.html, fusion_result.json, divergence.json (on a FAIL)
                       (a reused folder: earlier results are removed, log.txt and console.txt appended;
                       a folder that another run is using is refused)
  --inject-fault SPEC  harness self-test: perturb one module's output on the candidate only, MODULE=FACTOR or
                       MODULE=nan (e.g. trunk.blocks.0=1.02); a sound harness must then FAIL (exit 1);
                       for the burn-in: MODULE=drift@N (wrong after N calls), MODULE=leak, MODULE=sleep:MS
  --nproc N|all        certify N devices of this server at once, one process per device over torchrun
                       (python -m verify.server; default 1; all = every visible device)
  --locate             locate the first divergent module even when the run passes (on a FAIL it always runs)
  --save-golden DIR    also write the inputs and the CPU reference's outputs of every case to DIR (a golden set)
  --reference DIR      judge against the golden set in DIR instead of recomputing the CPU reference (e.g. made
                       on a GPU or a trusted machine); a set of other weights, config or cases is refused
  --fp32-modules FILE  fp16/bf16: keep these modules in fp32 (written by python -m verify.bisection precision)
  --reference-sha256 H with --reference: the sha256 of the set's manifest.json you trust (--save-golden prints
                       it); another set is refused (exit 2)
  --golden-source S    with --save-golden: reference (the CPU fp32 answers, default) or candidate (this device's,
                       e.g. a validated GPU to judge NPUs against)
  --batch-sizes LIST   your envelope: every image task at these batch sizes, the text tower on that many prompts
                       (e.g. 1,5,16)
  --sizes LIST         your envelope: every image task at batch 1 at these sizes (e.g. 224x224,336x512)
  --fuzz N             N extra cases drawn at random from the operating envelope (batch, sequence length, prompt
                       count and length); --seed S replays a sweep (default: a new seed, printed and recorded)
  --dataset DIR        also run VTP's own evaluations on an ImageFolder (python -m vtp_tools.eval zero-shot and
                       reconstruction): the candidate against the CPU fp32 unfused reference; LPIPS and rFID run
                       when their weight files are present, the log names the skipped ones and how to enable them
  -h, --help           show this help

Relative paths are taken from the current directory. The interpreter is $PYTHON, else `python` on PATH.

examples:
  bash run_verify.sh --device npu --require-weights --weights weights/VTP-Small-f16d64 --out verify_out/npu
  bash run_verify.sh --device cpu --quick
  bash run_verify.sh --device npu:0 --precision bf16 --fusion=-rope --prompt 'a dog, sleeping'

exit status:
  0    PASS: the environment is ready, the demo ran, every case, call and check passed
  1    verification FAILED: a case or check failed, or the demo or the evaluation crashed or gave NaN/Inf
       on a working environment
  2    environment or usage error: a bad option or file, an unwritable or busy --out, the environment check
       failed, missing weights, a bad device
  130  interrupted (Ctrl-C): the console and log.txt say at which step
USAGE
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
PROFILE="default"
CASES=""
THRESHOLDS=""
NO_TIMING=0
REQUIRE_WEIGHTS=0
OUT=""
FAULT=""
NPROC="1"
LOCATE=0
SAVE_GOLDEN=""
REFERENCE=""
FP32_MODULES=""
DATASET=""
REFERENCE_SHA256=""
GOLDEN_SOURCE=""
BATCH_SIZES=""
SIZES=""
FUZZ=""
SEED=""
LEVEL=""
BURN_IN=""
PROMPTS=()
PROMPTS_FILE=""

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
        --device | --weights | --precision | --fusion | --out | --inject-fault | --profile | --cases | \
            --thresholds | --prompt | --prompts-file | --nproc | --save-golden | --reference | --fp32-modules | \
            --dataset | --reference-sha256 | --golden-source | --batch-sizes | --sizes | --fuzz | --seed | \
            --level | --burn-in)
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
                --profile) PROFILE="$value" ;;
                --cases) CASES="$value" ;;
                --thresholds) THRESHOLDS="$value" ;;
                --prompt) PROMPTS+=("$value") ;;
                --prompts-file) PROMPTS_FILE="$value" ;;
                --nproc) NPROC="$value" ;;
                --save-golden) SAVE_GOLDEN="$value" ;;
                --reference) REFERENCE="$value" ;;
                --fp32-modules) FP32_MODULES="$value" ;;
                --dataset) DATASET="$value" ;;
                --reference-sha256) REFERENCE_SHA256="$value" ;;
                --golden-source) GOLDEN_SOURCE="$value" ;;
                --batch-sizes) BATCH_SIZES="$value" ;;
                --sizes) SIZES="$value" ;;
                --fuzz) FUZZ="$value" ;;
                --seed) SEED="$value" ;;
                --level) LEVEL="$value" ;;
                --burn-in) BURN_IN="$value" ;;
            esac
            ;;
        --quick | --no-timing | --require-weights | --locate)
            ((!has_value)) || usage_error "option $opt takes no value"
            case "$opt" in
                --quick) PROFILE="quick" ;;
                --locate) LOCATE=1 ;;
                --no-timing) NO_TIMING=1 ;;
                --require-weights) REQUIRE_WEIGHTS=1 ;;
            esac
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage_error "unknown option: $1"
            ;;
    esac
    shift
done

case "$PRECISION" in
    fp32 | fp16 | bf16) ;;
    *) usage_error "--precision must be fp32, fp16 or bf16, got '$PRECISION'" ;;
esac
[[ "$NPROC" == "all" || "$NPROC" =~ ^[1-9][0-9]*$ ]] || usage_error "--nproc must be a positive integer or 'all', got '$NPROC'"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    printf 'run_verify.sh: no Python interpreter: %s is not on PATH (set PYTHON=/path/to/python)\n' "$PYTHON" >&2
    exit 2
fi

if [[ -z "$OUT" ]]; then
    OUT="verify_out/$(date +%Y%m%d-%H%M%S)"
    [[ ! -e "$OUT" ]] || OUT="$OUT-$$"
fi
OUT_IS_NEW=0 PARENT_IS_NEW=0
[[ -e "$OUT" ]] || OUT_IS_NEW=1
[[ -e "$(dirname -- "$OUT")" ]] || PARENT_IS_NEW=1
# A run refused before it starts leaves nothing behind: the folder it made for itself goes again.
drop_new_out() {
    ((!OUT_IS_NEW)) || rm -rf -- "$OUT"
    ((!PARENT_IS_NEW)) || rmdir -- "$(dirname -- "$OUT")" 2>/dev/null || true
}
if ! mkdir -p "$OUT" 2>/dev/null || ! : 2>/dev/null >>"$OUT/.write-test"; then
    printf 'run_verify.sh: --out %s: cannot create or write to this folder; choose a writable folder with --out DIR\n' \
        "$OUT" >&2
    exit 2
fi
rm -f "$OUT/.write-test"

# One run per output folder: a second run on the same --out would interleave the logs, overwrite the summary
# and slow both runs' timings down. The lock is released when this shell exits, however it exits.
LOCK="$OUT/.run_verify.lock"
exec 9>>"$LOCK"
if ! flock -n 9; then
    owner="$(cat "$OUT/.run_verify.owner" 2>/dev/null || echo 'another run')"
    printf 'run_verify.sh: --out %s is in use by %s; wait for it to finish or choose another --out\n' \
        "$OUT" "$owner" >&2
    exit 2
fi
printf 'run_verify.sh pid %s, started %s on %s\n' "$$" "$(date '+%Y-%m-%d %H:%M:%S')" "$(hostname)" \
    >"$OUT/.run_verify.owner"
# The lock files go when this shell exits, however it exits (the lock itself is released with file descriptor 9).
trap 'rm -f -- "$LOCK" "$OUT/.run_verify.owner"' EXIT

# The package is imported from this checkout, whatever the current directory (no install needed).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Every option, file and the weights folder, checked before any step spends time (exit 2 on a problem).
pre_args=(--fusion="$FUSION" --profile "$PROFILE")
[[ -z "$WEIGHTS" ]] || pre_args+=(--weights "$WEIGHTS")
[[ -z "$FAULT" ]] || pre_args+=(--inject-fault "$FAULT")
[[ -z "$CASES" ]] || pre_args+=(--cases "$CASES")
[[ -z "$THRESHOLDS" ]] || pre_args+=(--thresholds "$THRESHOLDS")
for prompt in "${PROMPTS[@]+"${PROMPTS[@]}"}"; do pre_args+=(--prompt "$prompt"); done
[[ -z "$REFERENCE" ]] || pre_args+=(--reference "$REFERENCE")
[[ -z "$FP32_MODULES" ]] || pre_args+=(--fp32-modules "$FP32_MODULES")
[[ -z "$SAVE_GOLDEN" ]] || pre_args+=(--save-golden "$SAVE_GOLDEN")
[[ -z "$DATASET" ]] || pre_args+=(--dataset "$DATASET")
[[ -z "$REFERENCE_SHA256" ]] || pre_args+=(--reference-sha256 "$REFERENCE_SHA256")
[[ -z "$BATCH_SIZES" ]] || pre_args+=(--batch-sizes "$BATCH_SIZES")
[[ -z "$SIZES" ]] || pre_args+=(--sizes "$SIZES")
[[ -z "$FUZZ" ]] || pre_args+=(--fuzz "$FUZZ")
[[ -z "$SEED" ]] || pre_args+=(--seed "$SEED")
[[ -z "$LEVEL" ]] || pre_args+=(--level "$LEVEL")
[[ -z "$BURN_IN" ]] || pre_args+=(--burn-in "$BURN_IN")
if ! "$PYTHON" -m verify.preflight "${pre_args[@]}"; then
    printf "run_verify.sh: fix the options above, then run again. Try 'bash run_verify.sh --help'.\n" >&2
    drop_new_out
    exit 2
fi
if [[ -n "$PROMPTS_FILE" && ! -r "$PROMPTS_FILE" ]]; then
    drop_new_out
    usage_error "--prompts-file $PROMPTS_FILE: no such readable file"
fi

# A reused --out folder: results of an earlier run must not pass for this run's (log.txt and console.txt
# are appended to, one header per run).
rm -f "$OUT/env.json" "$OUT/accuracy_summary.json" "$OUT/fusion_result.json" "$OUT/output/reconstructed.png" \
    "$OUT/output/input.png" "$OUT/report.html" "$OUT/divergence.json" "$OUT/dataset_summary.json"
LOG="$OUT/log.txt"
CONSOLE="$OUT/console.txt"

# On a terminal the evaluation shows "case i of N, elapsed, time left" (its output goes through tee, so it
# cannot see the terminal itself); in a CI log it stays quiet.
[[ ! -t 1 ]] || export VTP_PROGRESS=1
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

STEP="0/3: options"
step() {
    STEP="$1"
    say ""
    say "===== run_verify.sh step $1 ($(date '+%Y-%m-%d %H:%M:%S')) ====="
}

# Ctrl-C (or SIGTERM): stop every process of the current step, say where the run stopped, exit 130. The
# steps run in the background and are waited for, so that the signal is handled at once.
kill_tree() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -TERM "$1" 2>/dev/null || true
}
on_interrupt() {
    trap '' INT TERM
    local job
    for job in $(jobs -p); do kill_tree "$job"; done
    wait 2>/dev/null || true
    say ""
    say "run_verify.sh: interrupted at step $STEP: the run was stopped; no verdict (results of finished steps" \
        "are kept, none is half-written)"
    printf 'VERDICT: INTERRUPTED\n' | tee -a "$LOG" "$CONSOLE"
    exit 130
}
trap on_interrupt INT TERM

# run_step CMD...: the command's output to the terminal and console.txt (and log.txt with --log-too), its exit
# status in $rc.
run_step() {
    local also_log=0
    if [[ "$1" == "--log-too" ]]; then also_log=1; shift; fi
    if ((also_log)); then
        ( set -o pipefail; "$@" 2>&1 | tee -a "$CONSOLE" "$LOG" ) &
    else
        ( set -o pipefail; "$@" 2>&1 | tee -a "$CONSOLE" ) &
    fi
    rc=0
    wait $! || rc=$?
}

common=(--device "$DEVICE")
[[ -z "$WEIGHTS" ]] || common+=(--weights "$WEIGHTS")
((!REQUIRE_WEIGHTS)) || common+=(--require-weights)
prompt_args=()
for prompt in "${PROMPTS[@]+"${PROMPTS[@]}"}"; do prompt_args+=(--prompt "$prompt"); done
[[ -z "$PROMPTS_FILE" ]] || prompt_args+=(--prompts-file "$PROMPTS_FILE")

say "===== run_verify.sh $(date '+%Y-%m-%d %H:%M:%S'): device=$DEVICE precision=$PRECISION fusion=$FUSION" \
    "weights=${WEIGHTS:-default} profile=$PROFILE nproc=$NPROC out=$OUT ====="
[[ -z "$FAULT" ]] || say "harness self-test: --inject-fault $FAULT (the candidate is perturbed on purpose: expect FAIL)"

# ---- 1. environment ------------------------------------------------------------------------------
step "1/3: environment check"
run_step --log-too "$PYTHON" -m verify.env_check "${common[@]}" --out "$OUT" --json "$OUT/env.json"
env_rc=$rc
if ((env_rc != 0)); then
    say "environment check failed (exit $env_rc): fix the problems listed above, then run again"
    say "outputs: $OUT (log.txt, env.json)"
    exit 2
fi

# ---- 2. inference demo ---------------------------------------------------------------------------
# ascend/inference.py appends its own lines to log.txt; the terminal copy goes to console.txt.
step "2/3: inference demo"
run_step "$PYTHON" "$ROOT/ascend/inference.py" "${common[@]}" --precision "$PRECISION" --fusion="$FUSION" \
    "${prompt_args[@]+"${prompt_args[@]}"}" --out "$OUT/output" --log "$LOG"
demo_rc=$rc
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
eval_args=("${common[@]}" --precision "$PRECISION" --fusion="$FUSION" --profile "$PROFILE" --quiet)
[[ -z "$CASES" ]] || eval_args+=(--cases "$CASES")
[[ -z "$THRESHOLDS" ]] || eval_args+=(--thresholds "$THRESHOLDS")
((!NO_TIMING)) || eval_args+=(--no-timing)
[[ -z "$FAULT" ]] || eval_args+=(--inject-fault "$FAULT")
((!LOCATE)) || eval_args+=(--locate always)
[[ -z "$SAVE_GOLDEN" ]] || eval_args+=(--save-golden "$SAVE_GOLDEN")
[[ -z "$REFERENCE" ]] || eval_args+=(--reference "$REFERENCE")
[[ -z "$FP32_MODULES" ]] || eval_args+=(--fp32-modules "$FP32_MODULES")
[[ -z "$REFERENCE_SHA256" ]] || eval_args+=(--reference-sha256 "$REFERENCE_SHA256")
[[ -z "$GOLDEN_SOURCE" ]] || eval_args+=(--golden-source "$GOLDEN_SOURCE")
[[ -z "$BATCH_SIZES" ]] || eval_args+=(--batch-sizes "$BATCH_SIZES")
[[ -z "$SIZES" ]] || eval_args+=(--sizes "$SIZES")
[[ -z "$FUZZ" ]] || eval_args+=(--fuzz "$FUZZ")
[[ -z "$SEED" ]] || eval_args+=(--seed "$SEED")
[[ -z "$LEVEL" ]] || eval_args+=(--level "$LEVEL")
[[ -z "$BURN_IN" ]] || eval_args+=(--burn-in "$BURN_IN")
eval_args+=("${prompt_args[@]+"${prompt_args[@]}"}")
if [[ "$NPROC" == "1" ]]; then
    run_step "$PYTHON" "$ROOT/verify/accuracy_eval.py" "${eval_args[@]}" --out "$OUT"
else
    server_args=(--nproc "$NPROC" --out "$OUT" --quiet)
    if [[ -n "$BURN_IN" ]]; then  # each rank's time limit: the default hour plus the burn-in
        server_args+=(--timeout "$("$PYTHON" -c 'import sys; from verify.burn_in import parse_duration as p; print(int(3600 + p(sys.argv[1])))' "$BURN_IN")")
    fi
    run_step "$PYTHON" -m verify.server "${server_args[@]}" -- "${eval_args[@]}"
fi
eval_rc=$rc

# ---- 4. task-level certification (--dataset) -------------------------------------------------------
# VTP's own evaluations on the user's ImageFolder dataset: the CPU fp32 unfused reference (original-exact
# text tower), then the candidate compared with it under ModelZoo-style gates (top-1 drop <= 1 point; PSNR,
# SSIM, LPIPS, rFID bounds in vtp_tools/eval/results.py). LPIPS and rFID run when their weight files are
# present (--metrics-if-present); the skipped ones are named in the log with where to put the file.
data_rc=0
if [[ -n "$DATASET" ]]; then
    step "4/4: task-level certification on $DATASET"
    mkdir -p "$OUT/eval"
    w_args=()
    [[ -z "$WEIGHTS" ]] || w_args+=(--weights "$WEIGHTS")
    ((!REQUIRE_WEIGHTS)) || w_args+=(--require-weights)
    for task in zero-shot reconstruction; do
        extra=() ref_extra=()
        if [[ "$task" == "reconstruction" ]]; then extra+=(--metrics-if-present); else ref_extra+=(--exact-text); fi
        run_step --log-too "$PYTHON" -m vtp_tools.eval "$task" --data "$DATASET" "${w_args[@]+"${w_args[@]}"}" \
            --device cpu --precision fp32 --fusion none "${ref_extra[@]+"${ref_extra[@]}"}" "${extra[@]+"${extra[@]}"}" \
            --out "$OUT/eval/$task-reference.json" -q
        if ((rc == 0)); then
            run_step --log-too "$PYTHON" -m vtp_tools.eval "$task" --data "$DATASET" "${w_args[@]+"${w_args[@]}"}" \
                --device "$DEVICE" --precision "$PRECISION" --fusion="$FUSION" "${extra[@]+"${extra[@]}"}" \
                --out "$OUT/eval/$task.json" --compare-to "$OUT/eval/$task-reference.json" -q
        fi
        say "task-level $task: exit $rc (results: $OUT/eval/$task.json)"
        if ((rc == 2)); then data_rc=2; elif ((rc != 0 && data_rc != 2)); then data_rc=1; fi
    done
fi

# ---- verdict ---------------------------------------------------------------------------------------
say ""
say "===== run_verify.sh verdict ====="
if [[ -f "$OUT/accuracy_summary.json" && $eval_rc -ne 2 ]]; then
    # the short form: the per-case table and every failure line are in log.txt and report.html
    "$PYTHON" -m verify.report "$OUT" --brief 2>&1 | tee -a "$CONSOLE" || true
fi

case "$demo_rc" in 0) demo_text="OK" ;; *) demo_text="FAILED (exit $demo_rc)" ;; esac
case "$eval_rc" in
    0) eval_text="PASS" ;;
    1) eval_text="FAIL" ;;
    2) eval_text="ERROR: environment or usage (exit 2)" ;;
    *) eval_text="CRASHED (exit $eval_rc)" ;;
esac
if ((eval_rc == 2 || data_rc == 2)); then
    status=2
elif ((demo_rc != 0 || eval_rc != 0 || data_rc != 0)); then
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
[[ -z "$DATASET" ]] || say "task-level (dataset)  $(case "$data_rc" in 0) echo PASS ;; 1) echo FAIL ;; *) echo "ERROR (exit 2)" ;; esac)"
printf 'VERDICT: %s\n' "$verdict"
printf 'VERDICT: %s\n' "$plain" >>"$LOG"
printf 'VERDICT: %s\n' "$plain" >>"$CONSOLE"
# The last screen: the cause and place, the case matrix (or a row per card), the outputs, how to open the report.
glance=""
if [[ -f "$OUT/accuracy_summary.json" && $eval_rc -ne 2 ]]; then
    glance="$("$PYTHON" -m verify.report "$OUT" --glance 2>/dev/null)" || true
fi
[[ -z "$glance" ]] || say "${glance%$'\n'*}"
outputs=()
for name in log.txt console.txt env.json output/ accuracy_summary.json report.html divergence.json \
    fusion_result.json torchrun.log eval/ rank0/ rank1/ rank2/ rank3/ rank4/ rank5/ rank6/ rank7/; do
    [[ ! -e "$OUT/$name" ]] || outputs+=("$name")
done
if [[ -d "$OUT/rank8" ]]; then outputs+=("rank<k>/ ($(find "$OUT" -maxdepth 1 -name 'rank[0-9]*' -type d | wc -l) cards)"); fi
say "outputs in $OUT: ${outputs[*]}"
[[ -z "$glance" ]] || say "${glance##*$'\n'}"
exit "$status"
