"""kvq for PyTorch: low-bit (INT2/INT4) KV caches with Jensen-bias-corrected fused attention.

    import torch, kvq
    cache = kvq.KVCache(batch=1, kv_heads=12, capacity=18720, head_dim=128, bits=2)
    o = cache.attention(q, k_chunk, v_chunk)     # torch.ops.kvq.attention
    cache.append(k_chunk, v_chunk)               # torch.ops.kvq.append
    o, lse = kvq.merge_states(o_parts, lse_parts)  # torch.ops.kvq.merge_states

kvq.distributed shards a cache across GPUs with torch.distributed (by heads or by tokens).

The ops come from libkvq_c (kvq's C ABI, built by CMake from kvq's headers) through ctypes;
see kvq._lib for where the library is looked for.
"""
from ._lib import KvqError, compiled_variants, library_path
from .cache import KVCache, PagedKVCache
from .states import merge_states

__all__ = ["KVCache", "KvqError", "PagedKVCache", "compiled_variants", "library_path", "merge_states"]
__version__ = "0.1.0"
