// Host/device qualifiers shared by the CPU reference and the CUDA kernels.
// Under nvcc the element math is `__host__ __device__ __forceinline__`; under a
// plain C++ compiler it is `inline`, so the same definition serves both.
#pragma once

#if defined(__CUDACC__)
#define KVQ_HOST_DEVICE __host__ __device__ __forceinline__
#define KVQ_DEVICE __device__ __forceinline__
#else
#define KVQ_HOST_DEVICE inline
#define KVQ_DEVICE inline
#endif

#if defined(__CUDA_ARCH__)
#define KVQ_DEVICE_CODE 1
#define KVQ_PRAGMA_UNROLL _Pragma("unroll")
#else
#define KVQ_DEVICE_CODE 0
#define KVQ_PRAGMA_UNROLL
#endif
