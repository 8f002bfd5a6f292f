// A consumer that sizes a cache and quantizes one group through kvq's public headers.
#include <kvq/kvq.hpp>

#include <cstdio>

int main() {
  using Layout = kvq::layout::CacheLayout<kvq::QuantSpec<2, 32, kvq::Granularity::kPerChannel>,
                                          kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, 128>;
  Layout layout;
  if (Layout::make({1, 8, 4096, kvq::DType::kBFloat16}, &layout) != kvq::Status::kSuccess) return 1;
  std::printf("kvq %d.%d.%d: %.1f bytes per token, %lld bytes per layer cache\n", kvq::kVersionMajor, kvq::kVersionMinor,
              kvq::kVersionPatch, Layout::kBytesPerToken, static_cast<long long>(layout.bytes()));
  return layout.bytes() > 0 ? 0 : 1;
}
