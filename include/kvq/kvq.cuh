// kvq: the whole library, CUDA parts included (needs nvcc): everything in kvq.hpp
// plus the GPU quantize-and-append, fused attention and state-merge host APIs.
#pragma once

#include "kvq/kvq.hpp"
#include "kvq/api/attention.cuh"
#include "kvq/api/merge.cuh"
#include "kvq/api/quantize_append.cuh"
