#!/usr/bin/env bash
# The project's DeepSpeed path on one CUDA GPU: for each preset, an uninterrupted fit of the regression demo,
# a fit SIGKILLed after a checkpoint then `--resume auto`, a fit preempted with SIGUSR1 then resumed; final
# checkpoints compared with the uninterrupted run (bench/deepspeed/check.py). Results: $OUT/deepspeed_gpu.json.
#
#   bench/deepspeed/run_gpu.sh smoke|full       (from the repo root; the wheels it needs in .whl/, see below)
#
# The GPU machine has torch, lightning, tensorboard, ninja, msgpack, psutil, py-cpuinfo, einops but not
# deepspeed, hjson, pydantic(+core, annotated-types, typing-inspection, typing_extensions>=4.16) or omegaconf:
# those travel as wheels in .whl/ (deepspeed built here with `DS_BUILD_OPS=0 pip wheel --no-deps deepspeed==0.19.8`).
set -u
MODE=${1:-full}
OUT=${OUT:-/tmp/ds_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export DS_ACCELERATOR=cuda TORCH_EXTENSIONS_DIR=/tmp/torch_extensions PYTHONUNBUFFERED=1

{
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "== nvcc"; nvcc --version | tail -2
  echo "== python"; which python3; python3 --version
  echo "== Python.h"; python3 -c "import sysconfig, os; p = sysconfig.get_paths()['include']; print(p, os.path.exists(os.path.join(p, 'Python.h')))"
  echo "== imports"
  python3 - <<'EOF'
import importlib, time
for name in ("torch", "lightning", "deepspeed", "omegaconf", "pydantic", "hjson", "tensorboard", "rich", "yaml"):
    t = time.time()
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')} ({time.time() - t:.1f}s) {getattr(m, '__file__', '')}")
    except Exception as e:
        print(f"{name} IMPORT FAILED: {type(e).__name__}: {e}")
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: F401
from launch.fit import main  # noqa: F401  (the project's own imports)
print("launch.fit imports OK")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# DeepSpeed's CPU Adam (needed by the DeepSpeedCPUAdam offload variants) is JIT-built with ninja + a C++ compiler.
# Built here in the background, timed, while the other fits run; a fit that needs it first waits on torch's
# build lock for this build to finish.
( start=$(date +%s)
  python3 -c "from deepspeed.ops.op_builder import CPUAdamBuilder as B; b = B(); print('compatible', b.is_compatible(True)); b.load(); print('cpu_adam loaded')"
  echo "rc=$? seconds=$(( $(date +%s) - start ))" ) > "$OUT/cpu_adam_build.log" 2>&1 &
BUILD=$!

case "$MODE" in
  smoke)
    python3 bench/deepspeed/check.py suite --root /tmp/dsb --out "$OUT" --max-steps 100 --every 20 \
      --cases deepspeed_stage_2,deepspeed_stage_2_offload,stage_2_offload_ds_cpu_adam \
      --timing deepspeed_stage_2 --timing-steps 300 --time-budget-s 200 --deadline-s 300 ;;
  full)
    python3 bench/deepspeed/check.py suite --root /tmp/dsb --out "$OUT" --max-steps 200 --every 20 --slots 16 \
      --cases "${CASES:-deepspeed_stage_1,deepspeed_stage_2,deepspeed_stage_3,deepspeed_stage_2_offload,deepspeed_stage_3_offload,stage_2_offload_torch_adamw,stage_2_offload_ds_cpu_adam,stage_3_offload_torch_adamw,stage_3_offload_ds_cpu_adam}" \
      --timing "${TIMING:-auto_no_deepspeed,deepspeed_stage_1,deepspeed_stage_2,deepspeed_stage_3,stage_2_offload_torch_adamw,stage_2_offload_ds_cpu_adam,stage_3_offload_torch_adamw,stage_3_offload_ds_cpu_adam}" \
      --timing-steps 400 --time-budget-s "${TIME_BUDGET_S:-420}" --deadline-s "${DEADLINE_S:-500}" ;;
  *) echo "usage: $0 smoke|full"; exit 2 ;;
esac
wait $BUILD
echo "== cpu_adam build"; tail -3 "$OUT/cpu_adam_build.log"
