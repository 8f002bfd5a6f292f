// The attention variants the demo uses, compiled once here (the demo's main file only
// declares them through default_variants.cuh).
#include <kvq/api/default_variants.cuh>

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2)
