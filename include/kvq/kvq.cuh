// kvq: the whole library, CUDA parts included (needs nvcc): everything in kvq.hpp
// plus the GPU quantize-and-append and fused attention host APIs.
#pragma once

#include "kvq/kvq.hpp"
#include "kvq/api/attention.cuh"
#include "kvq/api/quantize_append.cuh"
