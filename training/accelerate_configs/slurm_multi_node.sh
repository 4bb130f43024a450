#!/usr/bin/env bash
# Multi-node pretraining under SLURM with multi_node.yaml: one task (one accelerate launcher) per node.
#   sbatch training/accelerate_configs/slurm_multi_node.sh training/configs/short_stage.yaml run.output_dir=/shared/runs/short
# The run folder must be on storage every node sees (checkpoints and each process's RNG state live there);
# --resume continues a requeued or restarted job from its latest complete checkpoint (a first run starts fresh).
#SBATCH --job-name=videofirst
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --requeue
set -euo pipefail

recipe="${1:?usage: sbatch slurm_multi_node.sh RECIPE.yaml [section.key=value ...]}"
shift
gpus_per_node="${SLURM_GPUS_ON_NODE:-8}"
main_ip="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
here="$(dirname "$(readlink -f "$0")")"

# One launcher per node; SLURM_NODEID is this node's rank, the first node hosts the rendezvous.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file '$here/multi_node.yaml' \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * gpus_per_node)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $main_ip \
    --main_process_port 29500 \
    '$here/../pretrain.py' --config '$recipe' --resume $*"
