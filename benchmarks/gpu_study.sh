#!/usr/bin/env bash
# "Does allocation pay here?" on one GPU: every study of issue 24 in one command, records under
# data/results/study/ (committed like every grid's), the verdicts printed at the end.
#
#   bash benchmarks/gpu_study.sh                 # all three studies, then the decoder comparison
#   STUDIES="mrpc sst2" bash benchmarks/gpu_study.sh
#
# Budget: 9 minutes of a lent H100/H200. The MiniLM grid ran 136 runs in 14 minutes on one H100 at
# 14 at a time, so the two MiniLM studies (2 x 35 runs of 3 epochs) take about 7 minutes at SLOTS=14;
# the SmolLM2 study (35 short runs of MRPC as instructions) gets what is left, bounded by
# DEADLINE_MINUTES (no run starts after it; a rerun resumes, finished runs are skipped). "decoder" is
# issue 22's comparison (benchmarks/grids/decoder_mrpc_gpu.yaml: uniform q,v, uniform on all seven
# targets and static rank allocation at one budget, 3 seeds of MRPC as instructions).
set -euo pipefail
cd "$(dirname "$0")/.."

export GLUE_DIR="${GLUE_DIR:-$(cd ../shared/glue 2>/dev/null && pwd || echo ../shared/glue)}"
export HETEROLORA_HOME="${HETEROLORA_HOME:-$PWD/data}"
SLOTS="${SLOTS:-14}"
DEADLINE_MINUTES="${DEADLINE_MINUTES:-8}"
STUDIES="${STUDIES:-mrpc sst2 smollm2 decoder}"
FOLDER='results/study/{sweep}/{row}/seed{seed}'
GRID=(--epochs 3 --lr 0.0005 --batch-size 16 --max-length 128 --device cuda --seeds 5 --rank 4
      --folder "$FOLDER" --wait --slots "$SLOTS" --deadline-minutes "$DEADLINE_MINUTES")
ALL6=q,k,v,o,ffn_in,ffn_out

for study in $STUDIES; do
  case "$study" in
    mrpc)  python -m heterolora_core study --id study-mrpc-minilm --task mrpc --lora-targets "$ALL6" "${GRID[@]}" ;;
    sst2)  python -m heterolora_core study --id study-sst2-minilm --task sst2 --train-limit 4000 --lora-targets "$ALL6" \
             "${GRID[@]}" ;;
    smollm2)
      python -m heterolora_core fetch-model smollm2
      python -m heterolora_core study --id study-mrpc-smollm2 --model smollm2 --objective lm --task mrpc \
        --lora-targets q,k,v,o,ffn_gate,ffn_in,ffn_out --epochs 3 --lr 0.0002 --batch-size 16 --max-length 160 \
        --device cuda --seeds 5 --rank 4 --folder "$FOLDER" --wait --slots "$SLOTS" \
        --deadline-minutes "$DEADLINE_MINUTES" ;;
    decoder)
      python -m heterolora_core fetch-model smollm2
      python -m heterolora_core sweep benchmarks/grids/decoder_mrpc_gpu.yaml --set device=cuda --wait --slots "$SLOTS" \
        --deadline-minutes "$DEADLINE_MINUTES" ;;
    *) echo "error: unknown study $study (mrpc, sst2, smollm2, decoder)" >&2; exit 2 ;;
  esac
done
for id in study-mrpc-minilm study-sst2-minilm study-mrpc-smollm2; do
  python -m heterolora_core study --report --id "$id" || true
done
