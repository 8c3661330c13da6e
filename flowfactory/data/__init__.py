"""Data: the shapes world, image folders, webdataset shards, preference exports and latent caches
(`sources.py`), aspect buckets (`buckets.py`), caching (`cache.py`), curation (`curate.py`)
and deletion tombstones (`tombstones.py`)."""
