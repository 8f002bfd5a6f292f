// kvq — low-bit KV caches with Jensen-bias-corrected attention.
// The single source of the version; CMake reads these three lines.
#pragma once

#define KVQ_VERSION_MAJOR 0
#define KVQ_VERSION_MINOR 1
#define KVQ_VERSION_PATCH 0

namespace kvq {
inline constexpr int kVersionMajor = KVQ_VERSION_MAJOR;
inline constexpr int kVersionMinor = KVQ_VERSION_MINOR;
inline constexpr int kVersionPatch = KVQ_VERSION_PATCH;
}  // namespace kvq
