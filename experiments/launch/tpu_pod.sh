#!/usr/bin/env bash
# diffjax on a Cloud TPU pod slice: the same command on every worker.
#   bash experiments/launch/tpu_pod.sh TPU_NAME ZONE configs/cifar10_ddpm.py /mnt/shared/runs/c10 [--config.x=...]
# On TPU VMs, launch.py calls jax.distributed.initialize(), which finds the workers from the TPU
# metadata. WORKDIR must be visible to every worker (a GCS Fuse or NFS mount). Setup, once:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all --command='git clone <repo> diffjax
#     && cd diffjax && bash run.sh setup && .venv/bin/pip install "jax[tpu]==0.10.2"'
set -euo pipefail
TPU=${1:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [launch.py flags]}
ZONE=${2:?zone}
CONFIG=${3:?config file}
WORKDIR=${4:?workdir}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command="cd diffjax && .venv/bin/python launch.py --config=$CONFIG --workdir=$WORKDIR $*"
