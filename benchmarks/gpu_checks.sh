#!/usr/bin/env bash
# The GPU measurements of the closing notes, as one script (one NVIDIA GPU, repository root).
# Logs go to ${OUT:-/tmp/robustgen-gpu}. Needs torch with CUDA, and diffusers for step 2
# (pip install diffusers). Each step has its own time limit, so one failure does not hide the rest.
#   1. TRADES-10 step of WRN-28-10, batch 256: plain references vs robustgen fp32 / bf16+channels_last
#      (+ torch.compile), images/s, TFLOP/s, % of bf16 peak (benchmarks/trades_step.py)
#   2. diffusion sampler throughput, Ho et al.'s 35.7M UNet, batch 256, bf16 (benchmarks/diffusion_sampling.py)
#   3. robustgen run end to end on the GPU (digits, bf16 + channels_last + compile), short schedule
#   4. SyncBatchNorm in the training step on CUDA (a one-process group)
#   5. WRN-70-16 at batch 1024 in 4 micro-batches (bf16): speed and peak GPU memory
#   6. BatchNorm groups of 32 (train.bn_group_size, the paper presets) vs plain BatchNorm, WRN-28-10
set -u
OUT=${OUT:-/tmp/robustgen-gpu}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "--- $name: exit $? after $((SECONDS - t0)) s"
  grep -v -E "^\s*$|it/s\]|s/it\]|%\|" "$OUT/$name.log" | tail -n 12
}

step trades 120 python3 benchmarks/trades_step.py --arch wrn-28-10 --image 32 --channels 3 --batch 256 \
  --device cuda --repeats 5 --warmup 2 --references backward,autograd --variants adam,sign,adam+bf16+cl
step diffusion 100 python3 benchmarks/diffusion_sampling.py --device cuda --preset ho-cifar10 --bf16 --batch 256
step run 100 python3 -m robustgen.cli run --out "$OUT/run" --quiet --set device=cuda --set train.precision=bf16 \
  --set train.channels_last=true --set train.compile=true --set classifier.epochs=3 --set train.epochs=5 \
  --set generator.num_samples=5000
[ -f "$OUT/run/results.json" ] && python3 -c "
import json; r = json.load(open('$OUT/run/results.json'))
for m in r['models']: print(m['name'], 'clean', m['clean_accuracy'], 'robust', m['robust_accuracy'], 'train s', m['train_time_s'])"
step syncbn 45 python3 - <<'EOF'
import os, torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
from robustgen.models import create_model
from robustgen.train.steps import TrainingAttack, trades_step_loss
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group("nccl", rank=0, world_size=1)
model = nn.SyncBatchNorm.convert_sync_batchnorm(create_model("preact-resnet-18", num_classes=10)).cuda()
x, y = torch.rand(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
before = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
loss = trades_step_loss(TrainingAttack(norm="linf", eps=8 / 255), beta=6.0, bf16=True)(
    model, model, x, F.one_hot(y, 10).float(), torch.Generator(device="cuda").manual_seed(0))
loss.backward()
after = [m.running_mean for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
print("SyncBatchNorm layers", len(after), "loss", float(loss), "running stats updated once:",
      all(not torch.equal(a, b) for a, b in zip(after, before)))
dist.destroy_process_group()
EOF
step trades_compile 150 python3 benchmarks/trades_step.py --arch wrn-28-10 --image 32 --channels 3 --batch 256 \
  --device cuda --repeats 5 --warmup 3 --references backward --variants adam+bf16+cl,adam+bf16+cl+compile
step wrn70_micro 150 python3 benchmarks/trades_step.py --arch wrn-70-16 --image 32 --channels 3 --batch 1024 \
  --device cuda --repeats 2 --warmup 1 --references "" --variants adam+bf16+cl --micro-batches 4
step bn_groups 120 python3 benchmarks/trades_step.py --arch wrn-28-10 --image 32 --channels 3 --batch 256 \
  --device cuda --repeats 5 --warmup 2 --references "" --variants adam+bf16+cl,adam+bf16+cl+groups --bn-group-size 32
