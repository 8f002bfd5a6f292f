"""Merging partial attention results: ``kvq.merge_states`` (``torch.ops.kvq.merge_states``).

Attention over a key set split into disjoint parts (a cache split across GPUs, a long
cache processed in pieces) gives per part an output O_p and its log-sum-exp LSE_p
(``KVCache.attention(..., return_lse=True)``); the result over the union is

    LSE = log sum_p exp(LSE_p),    O = sum_p exp(LSE_p - LSE) * O_p.

A part that saw no key (LSE_p = -inf) weighs nothing; a row where every part is -inf gets
O = 0 and LSE = -inf.
"""
import torch

from . import ops


def merge_states(o_parts, lse_parts, *, return_lse=True):
    """Merges partial attention states on torch's current stream.

    o_parts: [parts, batch, num_q, heads, head_dim] (bfloat16, float16 or float32, unit
    head_dim stride, head_dim a multiple of 32 up to 512) or a sequence of [batch, num_q,
    heads, head_dim] tensors (stacked here, a copy); lse_parts: [parts, batch, heads, num_q]
    float32, each part dense, or a sequence of [batch, heads, num_q] tensors.

    Returns (o [batch, num_q, heads, head_dim] in o_parts' dtype, lse [batch, heads, num_q]
    float32), or o alone when return_lse is False. No allocation beyond the outputs, no
    synchronization: capturable in a CUDA graph, traceable by torch.compile."""
    if isinstance(o_parts, (list, tuple)):
        o_parts = torch.stack(list(o_parts))
    if isinstance(lse_parts, (list, tuple)):
        lse_parts = torch.stack(list(lse_parts))
    o, lse = ops.run(lambda: ops.merge_states_op(o_parts, lse_parts, return_lse),
                     lambda: ops.merge_launch(o_parts, lse_parts, return_lse),
                     o_parts if type(lse_parts) is torch.Tensor else lse_parts)
    return (o, lse) if return_lse else o
