// The Hopper (sm_90a) attention kernel in one include: configurations and schedules
// (sm90::Config, sm90::DefaultConfig), the plan and traits (sm90::Plan, sm90::Traits,
// sm90::variant_supported) and the kernel (sm90::attention_kernel).
#pragma once

#include "kvq/kernels/sm90/config.cuh"
#include "kvq/kernels/sm90/kernel.cuh"
#include "kvq/kernels/sm90/plan.cuh"
