"""Global batches of the data sources: each step's batch by position for every rank
(`Batches`), and worker processes that make the coming ones ahead of training (`Prefetcher`)."""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np
import torch

from flowfactory.data.buckets import BucketPlan
from flowfactory.data.sources import DataOptions, Sample, build_source, parse_spec
from flowfactory.errors import UserError


class Batches:
    """The global batch of each step, by position: `get(step, lo, hi)` is this rank's slice.

    Map-style sources: a pure function of (seed, step) (with buckets, a `BucketPlan`; an
    unreadable or deleted sample is replaced by another of the same bucket). Streams: each
    rank reads its own shards and fills per-bucket buffers; a slice is one bucket's samples.
    Mixtures: each step's whole global batch comes from one source, drawn by weight.
    """

    def __init__(self, spec: str, opts: DataOptions, batch_size: int, rank: int = 0, world: int = 1):
        parts = parse_spec(spec)
        self.sources = [build_source(kind, path, opts) for kind, path, _ in parts]
        for src in self.sources:
            if hasattr(src, "block"):  # sources whose samples must agree within a global batch
                src.block = batch_size
        w = np.array([p[2] for p in parts])
        self.weights = w / w.sum()
        self.batch_size, self.seed, self.rank, self.world = batch_size, opts.seed, rank, world
        self.plans = [BucketPlan(s.bucket_of, batch_size, opts.seed) if s.bucket_of is not None else None
                      for s in self.sources]  # fmt: skip
        self._streams: dict[int, Iterator] = {}
        self._buffers: dict[int, dict[tuple, list[Sample]]] = {}
        self._choices = np.zeros(0, dtype=np.int64)
        self._epochs = [0] * len(self.sources)

    def histogram(self) -> dict[str, int]:
        """Samples per bucket "HxW" of the finite sources (streams are counted as they are read)."""
        out: Counter = Counter()
        for s in self.sources:
            if s.bucket_of is not None:
                names = s.bucket_names() if hasattr(s, "bucket_names") else [f"{h}x{w}" for h, w in s.buckets]
                out.update(names[b] for b in s.bucket_of)
        return dict(out)

    @property
    def skipped(self) -> Counter:
        return sum((s.skipped for s in self.sources), Counter())

    def _route(self, step: int) -> tuple[int, int]:
        """-> (source, that source's own step count)."""
        if len(self.sources) == 1:
            return 0, step
        if step >= len(self._choices):  # draw choices in blocks, a pure function of the seed
            n = max(step + 1, 2 * len(self._choices), 1024)
            rng = np.random.default_rng([self.seed, 7])
            self._choices = rng.choice(len(self.sources), size=n, p=self.weights)
        src = int(self._choices[step])
        return src, int((self._choices[:step] == src).sum())

    def get(self, step: int, lo: int, hi: int) -> list[Sample]:
        src, local = self._route(step)
        source, plan = self.sources[src], self.plans[src]
        if hasattr(source, "stream"):
            return self._from_stream(src, hi - lo)
        if plan is None:
            return [source.sample(local * self.batch_size + p) for p in range(lo, hi)]
        members = plan.members
        out = []
        for i in plan.batch(local)[lo:hi]:
            same = members[source.bucket_of[i]]
            pos = int(np.searchsorted(same, i))
            for k in range(len(same)):  # the sample, else the next readable one of its bucket
                s = source.sample(int(same[(pos + k) % len(same)]))
                if s is not None:
                    break
            else:
                raise UserError(f"no readable sample left in a bucket of {type(source).__name__}")
            out.append(s)
        return out

    def _from_stream(self, src: int, n: int) -> list[Sample]:
        buffers = self._buffers.setdefault(src, {})
        fresh = False
        while True:
            for key, buf in buffers.items():
                if len(buf) >= n:
                    out, buffers[key] = buf[:n], buf[n:]
                    return out
            if src not in self._streams:
                self._streams[src] = self.sources[src].stream(self.rank, self.world, self._epochs[src])
                fresh = True
            try:
                s = next(self._streams[src])
            except StopIteration:  # the next epoch
                del self._streams[src]
                self._epochs[src] += 1
                if fresh:
                    raise UserError(f"data source {self.sources[src].urls} yields no readable samples on rank "
                                    f"{self.rank} (fewer shards than ranks?)") from None  # fmt: skip
                continue
            fresh = False
            buffers.setdefault(s.image.shape[1:] if s.image is not None else s.latent.shape[1:], []).append(s)


class _Slices(torch.utils.data.Dataset):
    """(step, lo, hi) -> that slice of the step's global batch, and the samples skipped making it."""

    def __init__(self, data: Batches):
        self.data = data

    def __len__(self) -> int:  # endless; the sampler decides what is read
        return 2**62

    def __getitem__(self, key: tuple[int, int, int]):
        before = self.data.skipped
        samples = self.data.get(*key)
        return key, samples, self.data.skipped - before


class _SlicesFrom(torch.utils.data.Sampler):
    def __init__(self, start: int, slices: list[tuple[int, int]]):
        self.start, self.slices = start, slices

    def __iter__(self):
        step = self.start
        while True:
            for lo, hi in self.slices:
                yield step, lo, hi
            step += 1


def _as_is(x):
    return x


class Prefetcher:
    """Worker processes that make the coming steps' samples while the model trains.

    Serves `get(step, lo, hi)` for map-style sources (a pure function of the step, so the
    batches are the same as without workers); `slices` are the (lo, hi) this rank reads each
    step, in order. A request out of that order (a resume, a validation pass) restarts the
    workers at the asked step. Samples the workers skip are counted in the sources' `skipped`.
    """

    def __init__(self, data: Batches, workers: int, slices: list[tuple[int, int]], ahead: int = 4):
        if any(hasattr(s, "stream") for s in data.sources):
            raise UserError("--data-workers needs map-style data (shapes, edits, folder, cache); streams read inline")
        self.data, self.workers, self.slices, self.ahead = data, workers, slices, ahead
        self._it: Iterator | None = None
        self._next: tuple[int, int, int] | None = None

    def get(self, step: int, lo: int, hi: int) -> list[Sample]:
        key = (step, lo, hi)
        if self._it is None or key != self._next:
            self.close()
            loader = torch.utils.data.DataLoader(_Slices(self.data), sampler=_SlicesFrom(step, self.slices),
                                                 batch_size=None, num_workers=self.workers, collate_fn=_as_is,
                                                 prefetch_factor=self.ahead, persistent_workers=False)  # fmt: skip
            self._it = iter(loader)
        got, samples, skipped = next(self._it)
        if got != key:  # cannot happen unless the sampler and the trainer disagree on the order
            raise RuntimeError(f"prefetched slice {got} where {key} was asked")
        if skipped:  # the workers' own copies of the sources counted them
            self.data.sources[0].skipped.update(skipped)
        i = self.slices.index((lo, hi))
        self._next = (step, *self.slices[i + 1]) if i + 1 < len(self.slices) else (step + 1, *self.slices[0])
        return samples

    def close(self) -> None:
        if self._it is not None:
            del self._it  # shuts the workers down
            self._it = None
