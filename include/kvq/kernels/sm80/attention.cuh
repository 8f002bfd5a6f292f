// The mma.sync attention kernel (sm_80+) in one include: tile configurations
// (sm80::TileConfig, sm80::DefaultTileConfig), traits (sm80::Traits) and the kernel
// (sm80::attention_kernel). It runs every variant; kvq::attention uses it wherever the
// Hopper kernel (kernels/sm90/attention.cuh) does not apply.
#pragma once

#include "kvq/kernels/sm80/config.cuh"
#include "kvq/kernels/sm80/kernel.cuh"
#include "kvq/kernels/sm80/traits.cuh"
