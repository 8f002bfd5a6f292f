// INT2 default pairs of the C ABI library (variants.cuh).
#include "variants.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kExact)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt64D64, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2)
