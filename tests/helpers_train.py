"""A short training config shared by the training tests and the torchrun worker."""

import dataclasses

from flowfactory.config import tiny_shapes


def short_config(**overrides):
    base = dict(steps=12, batch_size=8, dataset_size=64, val_every=0, checkpoint_every=1000, log_every=1, warmup=3,
                text_dropout=0.1)
    return dataclasses.replace(tiny_shapes(), **{**base, **overrides})
