"""torchrun worker: read one epoch of webdataset shards through 2 DataLoader workers, write the keys."""

import json
import sys

import torch
import torch.distributed as dist

from flowfactory.data.sources import DataOptions, WebDatasetSource


class Epoch(torch.utils.data.IterableDataset):
    def __init__(self, source, rank, world):
        self.source, self.rank, self.world = source, rank, world

    def __iter__(self):
        for s in self.source.stream(self.rank, self.world):
            yield s.key


def main(urls: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    source = WebDatasetSource(urls, DataOptions(image_size=16, stride=2))
    loader = torch.utils.data.DataLoader(Epoch(source, rank, world), batch_size=None, num_workers=2)
    keys = list(loader)
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(keys, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
