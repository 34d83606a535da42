#!/usr/bin/env bash
# The GPU measurements of the closing notes, as one script (one NVIDIA GPU, repository root),
# at most 20.5 minutes (the sum of the steps' limits). Logs go to ${OUT:-/tmp/robustgen-gpu}. Needs torch with CUDA, and diffusers for
# the diffusion step. Each step has its own time limit, so one failure does not hide the rest.
#   1. TRADES-10 step of WRN-28-10, batch 256: the ports' references vs robustgen fp32, bf16 +
#      channels_last before (clean logits computed twice, "twopass") and after (shared), and with
#      torch.compile: images/s, TFLOP/s, % of the bf16 peak (benchmarks/trades_step.py)
#   2. the same for WRN-70-16, batch 256, eager (robustgen only: the fp32 references take minutes)
#   3. WRN-70-16 at batch 1024 in 4 micro-batches (bf16): speed and peak GPU memory
#   4. where the time goes in the eager bf16 WRN-28-10 step (torch.profiler, CUDA kernel time)
#   5. SyncBatchNorm in the training step on CUDA (a one-process group)
#   6. robustgen run end to end on the GPU (digits, bf16, compile, layout chosen at start-up)
#   7. diffusion sampling of Ho et al.'s 35.7M UNet, batch 256: DPM-Solver++-20, EDM Heun at 10 levels
#      and wang2023 (EDM Heun, 20 levels), fp32 / bf16 / bf16+channels_last / +compile (CUDA graphs):
#      images/s, model TFLOP/s, % of the bf16 peak, ratios interleaved, and a profile of one batch per
#      variant (where the time goes; benchmarks/diffusion_sampling.py --profile)
#   8. BatchNorm groups of 32 (train.bn_group_size, the paper presets) vs plain BatchNorm, WRN-28-10 (after step 4)
#   9. labelling throughput of WRN-28-10 (f_NR) over a 32K-image store shard, batch 1024: fp32 /
#      bf16 / bf16+channels_last / +compile vs the loop without read-ahead (benchmarks/label_throughput.py)
#  10. the perfect-generator reference on CIFAR-10 (issue 12): preset cifar10_oracle_preact-resnet-18,
#      PreAct ResNet-18 on 10,000 real images vs the same plus the other 38,976 with f_NR labels,
#      782 TRADES steps each, AutoAttack on 1,000 test images (a class-shuffled copy of the test split).
#      Needs the data: CIFAR=folder with train.npz and test.npz (default ../shared/data/cifar10-jpeg,
#      which does not travel to the device machine by itself: 170 MB against its 64 MiB transfer limit)
#  11. a generator fitted only on kept CIFAR-10 images (issue 23): preset
#      cifar10_generator_preact-resnet-18, 5,000 real images; a 6.5M-parameter class-conditional DDPM
#      trained on them (8,000 steps, the digits study's early stopping), 20,000 samples with f_NR
#      labels, and the held-out oracle; baseline / ddpm / heldout arms at 782 TRADES steps each,
#      AutoAttack on 1,000 shuffled test images, the diagnostics table in report.md. Same data as 10.
#  12. rates: the measured-rates table the cost model reads (src/robustgen/measured_rates.json): TRADES
#      steps of WRN-28-10 (fp32, bf16 + channels_last) and WRN-70-16 (batch 1024 in 4 micro-batches),
#      sampling of the presets' UNets (Ho et al.'s CIFAR-10 UNet: ddpm / DPM-Solver++ / wang2023 in fp32,
#      bf16, bf16 + channels_last; guided-diffusion ImageNet 64 and 256: ddpm in fp32 and bf16) and
#      labelling (WRN-28-10, PreAct ResNet-18) into $OUT/measured_rates.json; 5.5 minutes at most.
#  13. rates_edm: EDM's DDPM++ network with the wang2023 sampler into the same table; 2.5 minutes at most.
# The limits sum to 38 minutes, more than two 10-minute device calls: name the steps to run only
# those (`gpu_checks.sh diffusion label`: 4.5 min; the first six: 7.5 min; cifar_oracle: 7 min;
# cifar_generator: 9.5 min).
# `benchmarks/gpu_checks.sh --tiny` runs the same steps on the CPU with tiny models and sizes,
# without torch.compile (minutes of compiling on a CPU) and the CUDA-only steps, and with 3x the
# time limits, to check the script itself without a GPU.
set -u
TINY=0
[ "${1:-}" = "--tiny" ] && { TINY=1; shift; }
ONLY=" $* "  # step names to run; empty: all
OUT=${OUT:-/tmp/robustgen-gpu}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src PYTHONUNBUFFERED=1
if [ $TINY = 1 ]; then
  DEV=cpu; WRN28=wrn-10-1; WRN70=wrn-10-2; B=8; B70=8; BIG=16; ATTACK=2; IMG=8; SCALE=3; COMPILE=
  export OMP_NUM_THREADS=1  # checks the script, not the speed: one thread is the least disturbed on a shared CPU
  echo "tiny mode: CPU, 1 thread, $WRN28 / $WRN70, batch $B, TRADES-$ATTACK, ${IMG}x${IMG}" | tee "$OUT/gpu.txt"
else
  DEV=cuda; WRN28=wrn-28-10; WRN70=wrn-70-16; B=256; B70=256; BIG=1024; ATTACK=10; IMG=32; SCALE=1
  COMPILE=,adam+bf16+cl+compile
  nvidia-smi -L | tee "$OUT/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee -a "$OUT/gpu.txt"
TRADES="python3 benchmarks/trades_step.py --device $DEV --image $IMG --channels 3 --steps $ATTACK"

selected() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$(($2 * SCALE)); shift 2
  selected "$name" || return 0
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "--- $name: exit $? after $((SECONDS - t0)) s"
  grep -v -E "^\s*$|it/s\]|s/it\]|%\|" "$OUT/$name.log" | tail -n 14
}
cuda_only() {  # cuda_only NAME: true (and a note) in tiny mode or when not selected
  selected "$1" || return 0
  [ $TINY = 1 ] && { echo "=== $1: skipped in tiny mode (needs CUDA)"; return 0; }
  return 1
}

step trades_wrn28 150 $TRADES --arch $WRN28 --batch $B --repeats 5 --warmup 2 --references port,zhang \
  --variants adam,adam+bf16+cl+twopass,adam+bf16+cl$COMPILE
step trades_wrn70 90 $TRADES --arch $WRN70 --batch $B70 --repeats 3 --warmup 1 --references "" \
  --variants adam+bf16+cl+twopass,adam+bf16+cl
step wrn70_micro 60 $TRADES --arch $WRN70 --batch $BIG --repeats 2 --warmup 1 --references "" \
  --variants adam+bf16+cl --micro-batches 4
step profile_wrn28 45 $TRADES --arch $WRN28 --batch $B --repeats 1 --warmup 1 --references "" \
  --variants adam+bf16+cl --profile
step bn_groups 60 $TRADES --arch $WRN28 --batch $B --repeats 3 --warmup 1 --references "" \
  --variants adam+bf16+cl,adam+bf16+cl+groups --bn-group-size 32
cuda_only syncbn || step syncbn 45 python3 - <<'EOF'
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
RUN_SET="--set device=$DEV --set train.precision=bf16 --set classifier.epochs=3 --set train.epochs=5 --set generator.num_samples=5000"
[ $TINY = 1 ] && RUN_SET="--set device=cpu --set train.precision=bf16 --set classifier.epochs=0.2 --set train.epochs=0.2 --set generator.num_samples=200 --set eval.n=50"
[ $TINY = 0 ] && RUN_SET="$RUN_SET --set train.compile=true"
step run 90 python3 -m robustgen.cli run --out "$OUT/run" --quiet $RUN_SET
selected run && [ -f "$OUT/run/results.json" ] && python3 -c "
import json, glob; r = json.load(open('$OUT/run/results.json'))
for m in r['models']: print(m['name'], 'clean', m['clean_accuracy'], 'robust', m['robust_accuracy'], 'train s', m['train_time_s'])
for f in glob.glob('$OUT/run/stages/train-*/step_options.json'): print(f.split('/')[-2], open(f).read().replace(chr(10), ' '))"
if [ $TINY = 1 ]; then  # the tiny UNet on the CPU, 2 repeats; compile is left out (minutes on a CPU)
  SAMPLE="--device cpu --preset tiny --batch 16 --repeats 2 --ddpm-steps 20 --variants fp32,cl"
  LABEL="--device cpu --arch wrn-10-1 --n 512 --batch 64 --repeats 2 --variants fp32,cl"
else
  SAMPLE="--device cuda --preset ho-cifar10 --batch 256 --repeats 2 --variants fp32,bf16,bf16+cl,bf16+cl+compile"
  LABEL="--device cuda --arch wrn-28-10 --n 32768 --batch 1024 --repeats 2 --variants fp32,bf16,bf16+cl,bf16+cl+compile"
fi
step diffusion 180 python3 benchmarks/diffusion_sampling.py $SAMPLE --samplers dpm-solver++,edm-heun,wang2023 --profile \
  --json "$OUT/diffusion.json"
step label 90 python3 benchmarks/label_throughput.py $LABEL

# 12. the rates table the cost model reads (issue 26): the presets' workloads, each row recorded into
#     $OUT/measured_rates.json (a copy of src/robustgen/measured_rates.json; copy it back to land it).
#     Per-call sampling rates come from short runs of each solver (DDPM 100 / 10 / 5 steps: the rate
#     per UNet call of the same sampler, which the cost model applies to the presets' 1000 / 250 steps)
TABLE="$OUT/measured_rates.json"
selected rates && [ ! -f "$TABLE" ] && cp src/robustgen/measured_rates.json "$TABLE"
if [ $TINY = 1 ]; then
  R_TRADES="--arch wrn-10-1 --batch 8"; R_TRADES70="--arch wrn-10-2 --batch 16 --micro-batches 2"
  R_CIFAR="--device cpu --preset tiny --batch 8 --ddpm-steps 4 --variants fp32,cl"
  R_IN64="--device cpu --preset tiny --batch 4 --ddpm-steps 2 --variants fp32"
  R_IN256="--device cpu --preset tiny --batch 4 --ddpm-steps 2 --variants fp32"
  R_LABEL="--device cpu --n 256 --batch 64 --variants fp32,cl"; R_ARCHS="wrn-10-1"
else
  R_TRADES="--arch wrn-28-10 --batch 256"; R_TRADES70="--arch wrn-70-16 --batch 1024 --micro-batches 4"
  R_CIFAR="--device cuda --preset ho-cifar10 --batch 256 --ddpm-steps 100 --variants fp32,bf16,bf16+cl"
  R_IN64="--device cuda --preset guided-diffusion-imagenet64 --batch 256 --ddpm-steps 10 --variants fp32,bf16"
  R_IN256="--device cuda --preset guided-diffusion-imagenet256 --batch 64 --ddpm-steps 5 --variants fp32,bf16"
  R_LABEL="--device cuda --n 32768 --batch 1024 --variants fp32,bf16,bf16+cl"; R_ARCHS="wrn-28-10 preact-resnet-18"
fi
step rates 330 bash -c "set -e
  $TRADES $R_TRADES --repeats 3 --warmup 2 --references '' --variants adam,adam+bf16+cl --record $TABLE
  $TRADES $R_TRADES70 --repeats 2 --warmup 1 --references '' --variants adam+bf16+cl --record $TABLE
  python3 benchmarks/diffusion_sampling.py $R_CIFAR --repeats 2 --samplers ddpm,dpm-solver++,wang2023 --record $TABLE
  python3 benchmarks/diffusion_sampling.py $R_IN64 --repeats 1 --samplers ddpm --record $TABLE
  python3 benchmarks/diffusion_sampling.py $R_IN256 --repeats 1 --samplers ddpm --record $TABLE
  for arch in $R_ARCHS; do python3 benchmarks/label_throughput.py $R_LABEL --arch \$arch --repeats 2 --record $TABLE; done"
# 13. rates_edm: sampling EDM's 55.7M DDPM++ network (edm-ddpmpp-cifar10, the architecture of Wang et al.
#     2023's generators) with their sampler, in fp32 / bf16 / bf16 + channels_last, into the same table
selected rates_edm && [ ! -f "$TABLE" ] && cp src/robustgen/measured_rates.json "$TABLE"
R_EDM="--device cuda --preset edm-ddpmpp-cifar10 --batch 256 --variants fp32,bf16,bf16+cl"
[ $TINY = 1 ] && R_EDM="--device cpu --preset tiny --batch 4 --variants fp32"
step rates_edm 150 python3 benchmarks/diffusion_sampling.py $R_EDM --repeats 2 --samplers wang2023 --record "$TABLE"
for s in rates rates_edm; do selected $s && grep -c '"workload"' "$TABLE" | sed 's/^/rows in the rates table: /'; done

# 10. CIFAR-10 oracle arm: the data's test split is sorted by class, and eval.n takes the first images
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg}
cifar_shuffled() {  # $OUT/cifar10: the train split and a class-shuffled test split
  mkdir -p "$OUT/cifar10" && ln -sf "$(cd "$CIFAR" && pwd)/train.npz" "$OUT/cifar10/train.npz"
  [ -f "$OUT/cifar10/test.npz" ] || python3 -c "
import numpy as np; from robustgen.data import write_npz
t = np.load('$CIFAR/test.npz'); order = np.random.default_rng(0).permutation(len(t['label']))
write_npz('$OUT/cifar10/test.npz', image=t['image'][order], label=t['label'][order])"
}
if selected cifar_oracle; then
  if [ -f "$CIFAR/train.npz" ] && [ -f "$CIFAR/test.npz" ]; then
    cifar_shuffled
    ORACLE_SET="--set device=$DEV"
    [ $TINY = 1 ] && ORACLE_SET="--set device=cpu --set data.train_size=500 --set generator.num_samples=1000 \
      --set classifier.arch=wrn-10-1 --set classifier.epochs=1 --set train.arch=wrn-10-1 --set train.epochs=0.5 \
      --set train.eval_every_epochs=0.25 --set data.val_size=100 --set eval.n=20 --set train.inner.steps=2"
    step cifar_oracle 420 python3 -m robustgen.cli run cifar10_oracle_preact-resnet-18 --out "$OUT/oracle" --quiet \
      --set "data.dataset=npz:$OUT/cifar10" $ORACLE_SET
    [ -f "$OUT/oracle/report.md" ] && cp "$OUT/oracle/report.md" "$OUT/oracle_report.md" && cat "$OUT/oracle_report.md"
  else
    echo "=== cifar_oracle: skipped, no $CIFAR/train.npz and test.npz (set CIFAR=folder)"
  fi
fi

# 11. CIFAR-10 generator fitted on the kept images only, next to the oracle (issue 23)
if selected cifar_generator; then
  if [ -f "$CIFAR/train.npz" ] && [ -f "$CIFAR/test.npz" ]; then
    cifar_shuffled
    GEN_SET="--set device=$DEV"
    [ $TINY = 1 ] && GEN_SET="--set device=cpu --set data.train_size=500 --set generator.num_samples=600 \
      --set generator.ddpm.unet=tiny --set generator.ddpm.train_steps=20 --set generator.ddpm.batch_size=16 \
      --set generator.ddpm.warmup_steps=5 --set generator.ddpm.sample_batch_size=200 --set generator.ddpm.sampling_steps=4 \
      --set generator.ddpm.precision=fp32 --set classifier.arch=wrn-10-1 --set classifier.epochs=1 \
      --set train.arch=wrn-10-1 --set train.epochs=1 --set train.eval_every_epochs=0.5 --set data.val_size=100 \
      --set eval.n=20 --set train.inner.steps=2"
    step cifar_generator 570 python3 -m robustgen.cli run cifar10_generator_preact-resnet-18 --out "$OUT/generator" \
      --quiet --set "data.dataset=npz:$OUT/cifar10" $GEN_SET
    [ -f "$OUT/generator/report.md" ] && cp "$OUT/generator/report.md" "$OUT/generator_report.md" \
      && cat "$OUT/generator_report.md"
  else
    echo "=== cifar_generator: skipped, no $CIFAR/train.npz and test.npz (set CIFAR=folder)"
  fi
fi
