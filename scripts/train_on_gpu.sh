#!/bin/bash
# The multi-source training recipe scaled to one GPU (batch 256, lr 1e-3), in one timed call: a smoke run of every step on CUDA (a few
# seconds), then the run itself, sized from the smoke's measured speed to end within LIMIT seconds; the model
# folder is left in $OUT as a tar in 15 MB parts (gpu.tgz.aa, .ab; `cat gpu.tgz.* | tar xz` rejoins it), logs
# beside it. Made for a lent GPU machine that reaches no network and takes 64 MiB of files, so the data travel
# as a small copy written first, on the machine that has the data (WebP, 192 px, about 34 MB):
#
#     python -m brain_tumor.data pack ../shared/data/brain-tumor-mri/Training ../shared/data/lgg-segmentation \
#         ../shared/data/mri-44class-half --out .pack
#     OUT=/tmp/out bash scripts/train_on_gpu.sh          # there; LIMIT=575 LR=1e-3 EMA=0.998 SEED=12 by default
#
# DEVICE=cpu SMOKE_IMAGES=200 SMOKE_SIZE=128 MIN_SIZE=128 BIG_EXTRA="--max-images 200" LIMIT=400 tries the whole
# script on a CPU in a few minutes. It needs only torch, torchvision, Pillow, OpenCV, NumPy, tqdm, matplotlib, safetensors and huggingface_hub.
# If the run is cut short, the best epoch's weights are left as two fp16 halves (best_0/1.safetensors): merge them
# ({**load_file(a), **load_file(b)}), load_state_dict into create_model(classes, init="scratch", img_size=192,
# output_stride=16), save_model, copy split.json beside it (model/'s), then python -m brain_tumor.trust FOLDER.
set -o pipefail
T0=$(date +%s)
LIMIT=${LIMIT:-575}   # seconds this whole script may take
export OUT=${OUT:-runs/gpu-out}
P=${PACK:-.pack}
mkdir -p "$OUT"
rm -rf runs/smoke runs/smoke.train_state.pt runs/gpu runs/gpu.train_state.pt  # a fresh run, not a resume
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
python3 -c "import torch, torchvision, PIL; from PIL import features; print('webp', features.check('webp'), 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'PIL', PIL.__version__)"
D="--data $P/brain-tumor-mri/Training --data $P/lgg-segmentation --data $P/mri-44class-half"
C="--backbone-lr same --weight-decay 0.05 --schedule onecycle --patience 0 --img-size 192 --output-stride 16 --init model --device ${DEVICE:-cuda} --batch-size 256 --lr ${LR:-1e-3}"
A="--curve-p 0.35 --strip-p 0.12 --artefact-p 0.1 --source-balance 0.6 --loc-weight 2 --head-weight 0.2 --ema ${EMA:-0.998} --seed ${SEED:-12}"
python3 train.py $D $C $A --max-images ${SMOKE_IMAGES:-1500} --epochs 2 --epoch-size ${SMOKE_SIZE:-4096} --out runs/smoke 2>&1 | tee $OUT/smoke.log
[ -f runs/smoke/model.safetensors ] || { echo "SMOKE FAILED"; exit 1; }
read E S <<<"$(python3 - "$T0" "$LIMIT" "${SMOKE_SIZE:-4096}" "${MIN_SIZE:-8192}" <<'EOF'
import json, sys, time
t0, limit, smoke, least = (float(a) for a in sys.argv[1:5])
h = json.load(open("runs/smoke/config.json"))["training"]["history"]
rate = smoke / h[-1]["seconds"]                 # images/s, the smoke's second epoch, its validation included
budget = limit - (time.time() - t0) - 90       # decoding all, finishing and packing: ~90 s
size = max(int(least), int(rate * 25) // 256 * 256)  # ~25 s epochs
epochs = max(2, int(budget / (size / rate + 6)))  # + validation, state and plot per epoch
print(epochs, size)
print(f"rate {rate:.0f} img/s, budget {budget:.0f} s -> {epochs} epochs of {size}", file=sys.stderr)
EOF
)"
LEFT=$(( LIMIT - 25 - $(date +%s) + T0 ))
[ "$LEFT" -gt 60 ] || { echo "only $LEFT s left after the smoke run: raise LIMIT"; exit 1; }
echo "big run: $E epochs of $S draws, $(( $(date +%s) - T0 )) s in, $LEFT s allowed"
timeout $LEFT python3 train.py $D $C $A --epochs $E --epoch-size $S $BIG_EXTRA --out runs/gpu 2>&1 | tee $OUT/train.log
if [ -f runs/gpu/model.safetensors ]; then
  tar czf - -C runs gpu | split -b 15M - $OUT/gpu.tgz.
elif [ -f runs/gpu.train_state.pt ]; then  # cut short: the best epoch's weights from its state, in two halves
  python3 - <<'EOF'
import os, torch
from safetensors.torch import save_file
s = torch.load("runs/gpu.train_state.pt", weights_only=True, map_location="cpu")
w = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in (s["best_model"] or s["model"]).items()}
parts, sizes = [{}, {}], [0, 0]
for k in sorted(w, key=lambda k: -w[k].numel()):  # two halves of about equal bytes (16 MiB a file comes back)
    i = int(sizes[1] < sizes[0])
    parts[i][k] = w[k]
    sizes[i] += w[k].numel()
for i in range(2):
    save_file(parts[i], os.path.join(os.environ["OUT"], f"best_{i}.safetensors"))
open(os.path.join(os.environ["OUT"], "best.txt"), "w").write(f"epoch {s['best_epoch']} score {s['best_score']}\n{s['history']}")
EOF
else
  echo "no epoch of the run finished: nothing to bring back"
fi
ls -la $OUT; echo "total $(( $(date +%s) - T0 )) s"
