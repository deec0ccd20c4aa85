#!/usr/bin/env bash
# Train a Cropwatch model on several GPU nodes with torchrun (DDP, NCCL; gloo on CPU).
# Run the same command on every node, changing only NODE_RANK:
#
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 TASK=disease DATA=/data/leaves OUT=/runs/leaf-v7 \
#     bash deploy/training/torchrun-multinode.sh          # on node 0
#   ... NODE_RANK=1 ...                                     # on node 1
#
# The data folder (or cube) and OUT must be on storage every node sees (NFS, a shared volume); only
# rank 0 writes the run folder, checkpoints and report. Add trainer options after the script name:
#   bash deploy/training/torchrun-multinode.sh --epochs 40 --batch-size 64 --arch mobilenetv3_large_100
# Resume after a node failure with --resume OUT/checkpoint.pt (disease) or --resume (yield).
set -euo pipefail

: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
MASTER_PORT="${MASTER_PORT:-29500}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l || echo 1)}"
TASK="${TASK:-disease}"
: "${DATA:?set DATA to the class folder / CSV (disease) or the season cube (yield)}"
: "${OUT:?set OUT to the run folder}"

case "$TASK" in
  disease) module=cloud_trainer.disease.train; args=(--data "$DATA" --out "$OUT") ;;
  yield)   module=cloud_trainer.yield_model.train; args=(--cube "$DATA" --output-dir "$OUT") ;;
  *) echo "TASK must be disease or yield, not $TASK" >&2; exit 2 ;;
esac

exec torchrun \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="cropwatch-$TASK" \
  --max_restarts=3 \
  -m "$module" "${args[@]}" "$@"
