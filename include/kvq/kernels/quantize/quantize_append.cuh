// The GPU quantize-and-append kernel in one include: its plan and Params
// (quantize::Traits, quantize::Params) and the kernels (quantize::quantize_append_kernel,
// quantize::update_lengths_kernel, and quantize::key_mean_kernel for centered layouts).
#pragma once

#include "kvq/kernels/quantize/kernel.cuh"
#include "kvq/kernels/quantize/key_mean.cuh"
#include "kvq/kernels/quantize/traits.cuh"
