"""Run under torchrun: `torchrun --nproc_per_node=2 tests/dist_worker.py OUT ddp|fsdp`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch.distributed as dist  # noqa: E402
from helpers_train import short_config  # noqa: E402

from flowfactory.train.trainer import Trainer  # noqa: E402

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    Trainer(short_config(parallel=mode), out, resume=False, progress=False).fit()
    dist.destroy_process_group()
