#!/usr/bin/env bash
# The GPU checks of the Atari issue in one pass, sized for a ~10-minute slot on a lent GPU machine:
#   1. the tests marked gpu (CUDA update and acting against the CPU, the CUDA-graph update against
#      the eager one, Pong with cuda_graphs + overlap on async envs, checkpoints loading on a CPU);
#   2. a Pong learning run (experiment=pong_fast over PONG_ENVS envs, PONG_VEC vectorization, at the Nature replay ratio),
#      cut at PONG_S seconds (SIGINT: it saves last.pt and stops), then `dqn eval` of its best.pt
#      by the greedy and the nature protocols;
#   3. scripts/bench_gpu.py: env steps/s at the Nature replay ratio, SB3 side by side;
#   4. (step "update", not in the default) scripts/bench_update.py: one update's time, variant by
#      variant (UPDATE_ARGS), and its kernels.
# STEPS picks the parts and their order (default "tests pong bench"). Everything lands in $OUT
# (default /tmp/gpu_check): summary.txt is the short version.
#   OUT=/tmp/x bash scripts/gpu_check.sh
#   OUT=/tmp/x STEPS="tests bench" BENCH_ROWS="ale+graphs+overlap+device N=64,sb3 N=16" bash scripts/gpu_check.sh
# Packages the machine lacks come as wheels in .whl/ (installed to /tmp/site when it exists).
set -u
OUT=${OUT:-/tmp/gpu_check}
PONG_S=${PONG_S:-250}
PONG_ENVS=${PONG_ENVS:-32}
PONG_VEC=${PONG_VEC:-async}
STEPS=${STEPS:-tests pong bench}
SWITCHES=${SWITCHES:-cuda_graphs=true overlap=true}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_ROWS=${BENCH_ROWS:-ale+graphs+overlap+device N=32,ale+graphs+overlap+device N=64,sb3 N=16,graphs+overlap+device N=32,graphs+overlap N=32,graphs+overlap+device N=64,graphs+overlap N=16,eager N=16,graphs N=16,graphs+overlap N=64,graphs+overlap bf16 N=32,graphs N=1,sb3 N=1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site" || exit 1
fi
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
say "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
say "== $(nproc) CPUs; $(python3 -c 'import torch, gymnasium, ale_py; print("torch", torch.__version__, "gymnasium", gymnasium.__version__, "ale-py", ale_py.__version__)' 2>&1)"

tests() {
timeout "${TESTS_S:-100}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/ >"$OUT/pytest_gpu.log" 2>&1
rc=$?
say "== pytest -m gpu: rc=$rc; $(tail -n 1 "$OUT/pytest_gpu.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | tee -a "$OUT/summary.txt"
}

pong() {
RUN=/tmp/pong_run
say "== pong: dqn train experiment=pong_fast device=cuda env.num_envs=$PONG_ENVS env.vectorization=$PONG_VEC agent.gradient_steps=$((PONG_ENVS / 4)) $SWITCHES (cut at ${PONG_S}s)"
start=$(date +%s)
timeout -s INT -k 30 "$PONG_S" python3 -m dqn_cli train experiment=pong_fast device=cuda env.num_envs="$PONG_ENVS" \
  env.vectorization="$PONG_VEC" agent.gradient_steps=$((PONG_ENVS / 4)) $SWITCHES checkpoint.save_buffer=false log.progress=false \
  "hydra.run.dir=$RUN" >"$OUT/pong_train.log" 2>&1
say "== pong: rc=$? after $(( $(date +%s) - start ))s"
grep -E "eval|done:|wall time|steps/s|Error|error" "$OUT/pong_train.log" | tail -n 25 | tee -a "$OUT/summary.txt"
python3 - "$RUN" >>"$OUT/summary.txt" 2>&1 <<'EOF'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for path in sorted(glob.glob(sys.argv[1] + "/events.out.tfevents.*")):
    acc = EventAccumulator(path); acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("eval/mean_return", "charts/SPS"):
        if tag in tags:
            print(tag, [(e.step, round(e.value, 1)) for e in acc.Scalars(tag)][:: 1 if tag.startswith("eval") else 10])
EOF
cp "$RUN"/events.out.tfevents.* "$OUT/" 2>/dev/null
for ckpt in best; do
  for protocol in greedy nature; do
    [ -f "$RUN/checkpoints/$ckpt.pt" ] || continue
    timeout 120 python3 -m dqn_cli eval "checkpoint=$RUN/checkpoints/$ckpt.pt" eval_protocol=$protocol episodes=10 \
      device=cuda tensorboard=false "output=/tmp/eval_${ckpt}_$protocol.json" >/dev/null 2>&1
    say "== eval $ckpt.pt $protocol: $(python3 -c "import json; r = json.load(open('/tmp/eval_${ckpt}_$protocol.json')); print('step', r['step'], 'mean', r['mean_return'], 'std', round(r['std_return'], 2), r['returns'])" 2>&1 | tail -n 1)"
  done
done
}

bench() {  # rows in order of interest; results.md is rewritten after each row
timeout "${BENCH_S:-150}" python3 scripts/bench_gpu.py --out "$OUT/bench" --rows "$BENCH_ROWS" $BENCH_ARGS >"$OUT/bench.log" 2>&1
say "== bench rc=$?"
cat "$OUT/bench/results.md" >>"$OUT/summary.txt" 2>/dev/null
}

update() {
timeout "${UPDATE_S:-200}" python3 scripts/bench_update.py ${UPDATE_ARGS:-} >"$OUT/bench_update.log" 2>&1
say "== bench_update rc=$?"
grep -vE "^\s*(W|I)[0-9]{4} " "$OUT/bench_update.log" | tail -n 60 >>"$OUT/summary.txt"
}

for part in $STEPS; do "$part"; done
cat "$OUT/summary.txt"
