// kvq: everything that compiles with a plain C++17 compiler (no CUDA headers):
// specs, element math, cache layouts, the CPU reference and status codes.
#pragma once

#include "kvq/layout/cache_layout.hpp"
#include "kvq/math/correction.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/online_softmax.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/math/rotation.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/reference/attention.hpp"
#include "kvq/reference/merge.hpp"
#include "kvq/reference/quantize_append.hpp"
#include "kvq/spec/quant_spec.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/spec/variant.hpp"
#include "kvq/status.hpp"
#include "kvq/version.hpp"
