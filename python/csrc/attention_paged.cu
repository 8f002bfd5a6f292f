// Paged (block-table) pairs of the C ABI library (variants.cuh).
#include "variants.cuh"

KVQ_C_FOR_EACH_PAGED_ATTENTION_VARIANT(KVQ_INSTANTIATE_ATTENTION)
