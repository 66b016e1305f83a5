"""`mmsr_store` (folder `store/`): the zarr cache of frozen encoder states.

It knows arrays and fingerprints, not models: it imports neither `mmsr` nor `mmsr_cli`.

    from mmsr_store import open_cache
    cache = open_cache(path)
    cache.check({"text": fingerprint})
    hidden, mask = cache.load("text", into="ram")   # float16 [N,T,D], bool [N,T]
    verify_cache(path).bad                           # chunks that no longer decode to what was written
"""

from mmsr_store.errors import StoreError
from mmsr_store.reader import Cache, inspect_cache, open_cache
from mmsr_store.shards import Shard
from mmsr_store.verify import VerifyReport, verify_cache
from mmsr_store.writer import ChunkTask, CacheWriter, ModalitySpec

__all__ = ["Cache", "CacheWriter", "ChunkTask", "ModalitySpec", "Shard", "StoreError", "VerifyReport", "inspect_cache",
           "open_cache", "verify_cache"]
