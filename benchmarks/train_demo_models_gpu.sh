#!/usr/bin/env bash
# The shipped demo models, retrained on one GPU in about 25 minutes (record: benchmarks/results/gpu-demo/).
#
#   benchmarks/train_demo_models_gpu.sh RUNS_DIR          # T1=450 T2=150 seconds by default
#   SMOKE=1 benchmarks/train_demo_models_gpu.sh RUNS_DIR  # every step for a few seconds: checks the pipeline
#
# Phase 1, side by side: the text-to-image model continued from the shipped checkpoint, and the
# Kontext edit model from the same start. Each trains at its constant learning rate for T1 seconds,
# is stopped by SIGTERM (the state is saved) and resumes with a linear cooldown sized by its measured
# speed to take about T2 seconds. This equals one run with `--steps S --cooldown C` (S and C in the log).
# Phase 2, side by side, from phase 1's text-to-image model: `dev` (guidance distillation), `schnell`
# (LADD) and the edge Control-LoRA (and a tier manifest of the three). Phase 3: geneval-mini, editbench-mini,
# control-mini on the GPU; the tier table: `python benchmarks/bench_tiers.py --tiers RUNS_DIR/tiers.json`.
set -uo pipefail
R=$(realpath -m "${1:?usage: $0 RUNS_DIR}")
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-cuda}
COMPILE=(--compile)
[ "$DEVICE" = cpu ] && COMPILE=()  # (a check of the script on a CPU: compiling would take most of it)
T1=${T1:-450}
T2=${T2:-150}
DEV_STEPS=1500 SCHNELL_STEPS=400 CANNY_STEPS=3000 LIMIT=() PAIRS=(--pairs 200) CHAINS=20
if [ "$SMOKE" = 1 ]; then
    T1=40 T2=5 DEV_STEPS=10 SCHNELL_STEPS=4 CANNY_STEPS=10 LIMIT=(--limit 8) PAIRS=(--pairs 10) CHAINS=2
fi
FF=(python3 -m flowfactory)
BASE=${BASE:-flowfactory/assets/shapes-demo.safetensors}
mkdir -p "$R"
log() { echo "[$(date +%T)] $*" | tee -a "$R/driver.log"; }

last_checkpoint() { ls "$1"/checkpoints/step_*.safetensors | sort | tail -1; }

timed() {  # timed NAME ARGS...: constant learning rate for T1 s, then a cooldown of about T2 s
    local name=$1
    shift
    log "$name: constant phase, ${T1}s"
    "${FF[@]}" train "$@" --out "$R/$name" --steps 100000000 --device "$DEVICE" --json >"$R/$name.log" 2>&1 &
    local pid=$!
    sleep "$T1"
    while kill -0 "$pid" 2>/dev/null && ! grep -qs '"data"' "$R/$name/metrics.jsonl"; do sleep 2; done  # in the loop?
    sleep 5
    kill -TERM "$pid"
    wait "$pid" || { log "$name: FAILED (see $R/$name.log)"; return 1; }
    local plan
    plan=$(python3 - "$R/$name/metrics.jsonl" "$T2" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
stop = [r["step"] for r in rows if "stopped" in r][-1]
rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r][-20:]
print(stop, max(1, int(statistics.median(rates) * float(sys.argv[2]))))
EOF
    ) || { log "$name: no stop record"; return 1; }
    read -r step cool <<<"$plan"
    log "$name: stopped at $step; cooldown $cool steps -> --steps $((step + cool)) --cooldown $cool"
    "${FF[@]}" train "$@" --out "$R/$name" --steps $((step + cool)) --cooldown "$cool" --device "$DEVICE" --json \
        >>"$R/$name.log" 2>&1 || { log "$name: cooldown FAILED"; return 1; }
    log "$name: done"
}

# ----- phase 1 -----
timed pro --recipe shapes-demo --init "$BASE" --batch-size 256 --precision bf16 "${COMPILE[@]}" --data-workers 8 \
    --checkpoint-every 2000 &
timed edit --recipe shapes-edit --init "$BASE" --batch-size 128 --precision bf16 --data-workers 6 \
    --checkpoint-every 2000 &
wait
PRO=$(last_checkpoint "$R/pro") || exit 1
EDIT=$(last_checkpoint "$R/edit") || exit 1
cp "$PRO" "$R/pro.safetensors" && cp "$EDIT" "$R/edit.safetensors"
touch "$R/phase1.done"
log "phase 1 done: $PRO $EDIT"

# ----- phase 2 -----
common=(--device "$DEVICE" --json)
P2=(timeout -s TERM "${P2_SECONDS:-240}")  # a guard: SIGTERM saves the run where it is
declare -A pids
"${P2[@]}" "${FF[@]}" distill guidance --teacher "$R/pro.safetensors" --recipe shapes-dev --out "$R/dev" --steps "$DEV_STEPS" \
    --cooldown $((DEV_STEPS / 5)) --data-workers 3 "${common[@]}" >"$R/dev.log" 2>&1 &
pids[dev]=$!
"${P2[@]}" "${FF[@]}" train --recipe shapes-canny-lora --init "$R/pro.safetensors" --out "$R/canny" --steps "$CANNY_STEPS" \
    --cooldown $((CANNY_STEPS / 5)) --batch-size 64 --data-workers 4 --checkpoint-every 2000 "${common[@]}" \
    >"$R/canny.log" 2>&1 &
pids[canny]=$!
wait "${pids[dev]}" || log "dev: FAILED (see $R/dev.log)"
cp "$(last_checkpoint "$R/dev")" "$R/dev.safetensors"
# schnell starts from the dev tier (one pass per step at the teacher's guidance scale)
"${P2[@]}" "${FF[@]}" distill ladd --teacher "$R/pro.safetensors" --student "$R/dev.safetensors" --recipe shapes-schnell \
    --out "$R/schnell" --steps "$SCHNELL_STEPS" --cooldown $((SCHNELL_STEPS / 4)) --d-lr-mult 10 --t-hat-mean 0 \
    --data-workers 2 "${common[@]}" >"$R/schnell.log" 2>&1 &
pids[schnell]=$!
for job in "${!pids[@]}"; do wait "${pids[$job]}" || log "$job: FAILED (see $R/$job.log)"; done
cp "$(last_checkpoint "$R/schnell")" "$R/schnell.safetensors"
cp "$(ls "$R"/canny/checkpoints/lora_step_*.safetensors | sort | tail -1)" "$R/canny-lora.safetensors"
cat >"$R/tiers.json" <<'EOF'
{"model": "shapes-demo",
 "tiers": {"pro": {"checkpoint": "pro.safetensors", "steps": 28, "guidance": 3.0},
           "dev": {"checkpoint": "dev.safetensors", "steps": 28, "guidance": 3.0},
           "schnell": {"checkpoint": "schnell.safetensors", "steps": 4, "guidance": 3.0}}}
EOF
touch "$R/phase2.done"
log "phase 2 done"

# ----- phase 3 -----
"${FF[@]}" eval geneval --checkpoint "$R/pro.safetensors" --out "$R/eval-pro" --batch-size 256 "${LIMIT[@]}" \
    "${common[@]}" >"$R/eval-pro.log" 2>&1 || log "eval-pro: FAILED"
"${FF[@]}" eval editbench --editor model --checkpoint "$R/edit.safetensors" --identity-chains "$CHAINS" \
    "${PAIRS[@]}" --out "$R/eval-edit" "${common[@]}" >"$R/eval-edit.log" 2>&1 || log "eval-edit: FAILED"
"${FF[@]}" eval control --checkpoint "$R/pro.safetensors" --lora "$R/canny-lora.safetensors" --encoder edges \
    "${PAIRS[@]}" --out "$R/eval-canny" "${common[@]}" >"$R/eval-canny.log" 2>&1 || log "eval-canny: FAILED"
touch "$R/phase3.done"
log "phase 3 done"
