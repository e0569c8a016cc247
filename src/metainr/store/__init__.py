"""Fields as data: a field store holds the fitted fields of a whole dataset.

A store is a directory: ``index.sqlite`` (SQLite in WAL mode: the store's shared settings, one row
per shard and per signal with its metrics) and ``shards/*.safetensors`` (several signals' params
each). :func:`encode` fills one from a checkpoint (resumably, in parallel under torchrun),
:class:`FieldStore` reads it as a ``torch.utils.data.Dataset``, :func:`decode` writes one signal
back in its task's form, :func:`store_info` summarises it.
"""
from .encoding import decode, default_output, encode, signal_ids, store_info
from .field_store import FieldStore
from .index import INDEX_NAME, STORE_FORMAT, STORE_VERSION, ShardRow, SignalRow
from .shards import SHARD_DIR

__all__ = ["FieldStore", "INDEX_NAME", "SHARD_DIR", "STORE_FORMAT", "STORE_VERSION", "ShardRow", "SignalRow",
           "decode", "default_output", "encode", "signal_ids", "store_info"]
