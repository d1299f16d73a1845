#!/usr/bin/env bash
# GPU checks of lmlab on a CUDA machine; prints tokens/s and MFU. Run from the repository root in lmlab's venv:
#
#     bash scripts/gpu_check.sh            # all three checks (about 5-10 minutes on one H100/H200)
#     STEPS=100 bash scripts/gpu_check.sh  # shorter training runs
#     BENCH_BATCHES="16 32" bash scripts/gpu_check.sh  # the benchmark at each of these micro-batch sizes
#     BENCH_COMPARE="" bash scripts/gpu_check.sh         # lmlab alone (default: also a plain loop and HF's Trainer)
#
# (i)   bf16-mixed training with `model.compile=true` (nanoGPT's 10.7 M baby GPT, experiment=shakespeare_char_gpu)
# (ii)  the `hardware=fsdp` profile (FSDP2) on every visible GPU, same experiment
# (iii) the throughput benchmark of the 124 M GPT-2 shape in bf16 (scripts/bench_train.py --gpu): tokens/s and MFU
#       against the GPU's peak from Lightning's table (target >= 40 %); at the last micro-batch size also a
#       hand-written loop and HF's Trainer (eager and compiled) on the same batches (target lmlab >= 1.3x HF)
# Each run's end-of-run summary also prints tokens/s, MFU and peak memory; summaries land in $OUT_DIR.
# A failed check does not stop the others; the exit status is 1 if any failed, 2 without a CUDA GPU.
set -uo pipefail

STEPS=${STEPS:-300}
BENCH_BATCHES=${BENCH_BATCHES:-32}
BENCH_COMPARE=${BENCH_COMPARE---plain --hf}
OUT_DIR=${OUT_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
PYTHON=${PYTHON:-python}

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [[ "$gpus" -lt 1 ]]; then
  echo "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); run this on a CUDA machine" >&2
  exit 2
fi
"$PYTHON" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), '| torch', torch.__version__)"
mkdir -p "$OUT_DIR"

summary() {  # the perf numbers of one run's summary.json
  "$PYTHON" - "$1/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
p = s.get("perf", {})
mfu = f"{p['mfu']:.1%}" if "mfu" in p else "n/a"
print(f"  val/loss {s['metrics'].get('val/loss', float('nan')):.4f}; {p.get('tokens_per_sec', 0):,.0f} tokens/s; "
      f"MFU {mfu}; peak memory {p.get('peak_memory_bytes', 0) / 2**30:.2f} GiB")
EOF
}

common=(experiment=shakespeare_char_gpu "trainer.max_steps=$STEPS" "trainer.val_check_interval=$STEPS" logger=csv
        sample.max_new_tokens=50)

failed=()

echo "== (i) bf16-mixed + model.compile=true, 1 GPU"
lmlab train "${common[@]}" hardware=gpu trainer.precision=bf16-mixed model.compile=true \
  "hydra.run.dir=$OUT_DIR/compile" && summary "$OUT_DIR/compile" || failed+=("(i) compile")

echo "== (ii) hardware=fsdp on $gpus GPU(s)"
lmlab train "${common[@]}" hardware=fsdp "trainer.devices=$gpus" "hydra.run.dir=$OUT_DIR/fsdp" \
  && summary "$OUT_DIR/fsdp" || failed+=("(ii) fsdp")

last_batch=${BENCH_BATCHES##* }
for batch in $BENCH_BATCHES; do
  compare=()
  [[ "$batch" == "$last_batch" ]] && read -ra compare <<< "$BENCH_COMPARE"
  echo "== (iii) throughput of the 124 M GPT-2 shape, bf16-mixed, compiled, micro-batch $batch x 1024 ${compare[*]}"
  "$PYTHON" scripts/bench_train.py --gpu "${compare[@]}" model.compile=true "data.batch_size=$batch" 2>&1 \
    | tee "$OUT_DIR/bench_gpt2_b$batch.txt" | grep -E "steady state|MFU|peak memory|plain PyTorch|HF Trainer|Error" \
    || failed+=("(iii) bench batch $batch")
done

if (( ${#failed[@]} )); then
  echo "gpu_check: FAILED: ${failed[*]}; outputs in $OUT_DIR" >&2
  exit 1
fi
echo "gpu_check: done; outputs in $OUT_DIR"
