# GPU tests of the fused chunk attention (include/kvq/kernels/sm80/, sm90/, common/,
# include/kvq/api/attention.cuh), one executable per cache layout with one translation
# unit per correction mode (each instantiates its variant for bf16 and fp16), and the
# standalone dump program that tests/kernels/torch_check.py reads.
set(_kvq_attn ${CMAKE_CURRENT_LIST_DIR})

# _kvq_attention_test(name [SM90_CASES] source...): SM90_CASES where the binary has [sm90]
# cases (a test spec that matches no case fails).
function(_kvq_attention_test name)
  cmake_parse_arguments(PARSE_ARGV 1 _a "SM90_CASES" "" "")
  set(_srcs)
  foreach(_s IN LISTS _a_UNPARSED_ARGUMENTS)
    list(APPEND _srcs ${_kvq_attn}/${_s})
  endforeach()
  set(_sm90)
  if(_a_SM90_CASES)
    set(_sm90 SM90_CASES)
  endif()
  kvq_add_gpu_test(${name} ${_sm90} SOURCES ${_srcs})
  if(TARGET ${name})
    set_tests_properties(${name} PROPERTIES LABELS "gpu;attention" TIMEOUT 1800)
  endif()
  if(TEST ${name}_sm90)
    set_tests_properties(${name}_sm90 PROPERTIES LABELS "gpu;sm90;attention" TIMEOUT 1800)
  endif()
endfunction()

_kvq_attention_test(test_attention_int2_pt128 SM90_CASES
  test_attention_int2_pt128_none.cu test_attention_int2_pt128_taylor2.cu test_attention_int2_pt128_taylor4.cu
  test_attention_api.cu test_attention_split.cu)
_kvq_attention_test(test_attention_int2_pc32
  test_attention_int2_pc32_none.cu test_attention_int2_pc32_taylor2.cu test_attention_int2_pc32_taylor4.cu
  test_attention_int2_pc32_exact.cu)
_kvq_attention_test(test_attention_int4_pt128 SM90_CASES
  test_attention_int4_pt128_none.cu test_attention_int4_pt128_taylor2.cu test_attention_int4_pt128_taylor4.cu)
_kvq_attention_test(test_attention_int4_pc32
  test_attention_int4_pc32_none.cu test_attention_int4_pc32_taylor2.cu test_attention_int4_pc32_taylor4.cu
  test_attention_int4_pc32_exact.cu)
_kvq_attention_test(test_attention_d64 SM90_CASES
  test_attention_int2_pt64_d64_none.cu test_attention_int2_pt64_d64_taylor2.cu test_attention_int4_pc32_d64_taylor2.cu)
_kvq_attention_test(test_attention_config SM90_CASES test_attention_config.cu test_attention_config_tiles.cu test_attention_groups.cu)

if(KVQ_HAS_CUDA)
  # Not a test: writes .npy files for torch_check.py (see that script).
  add_executable(attention_dump ${_kvq_attn}/attention_dump.cu)
  kvq_target_defaults(attention_dump)
  target_link_libraries(attention_dump PRIVATE CUDA::cudart)
  target_include_directories(attention_dump PRIVATE ${PROJECT_SOURCE_DIR}/tests)
endif()

# The selection without sm_90a code: built for sm_80 and plain sm_90, whatever
# KVQ_CUDA_ARCHITECTURES says.
kvq_add_gpu_test(test_attention_fallback SOURCES ${_kvq_attn}/test_attention_fallback.cu)
if(TARGET test_attention_fallback)
  set_target_properties(test_attention_fallback PROPERTIES CUDA_ARCHITECTURES "80;90")
  set_tests_properties(test_attention_fallback PROPERTIES LABELS "gpu;attention")
endif()

# Rotated keys: the mma.sync kernel (forced) and the Hopper kernel ([sm90] cases).
_kvq_attention_test(test_attention_rotated
  test_attention_rotated_pt128.cu test_attention_rotated_pc32.cu test_attention_rotated_int8.cu)
_kvq_attention_test(test_attention_rotated_sm90 SM90_CASES
  test_attention_rotated_sm90.cu test_attention_rotated_sm90_192.cu test_attention_rotated_sm90_config.cu)

# Centered rotated keys: the mma.sync kernel (forced).
_kvq_attention_test(test_attention_centered test_attention_centered_pt128.cu test_attention_centered_pc32_d64.cu)
# Centered rotated keys on the Hopper kernel ([sm90] cases; the plain test: compile-time
# facts and argument refusals).
_kvq_attention_test(test_attention_centered_sm90 SM90_CASES
  test_attention_centered_sm90.cu test_attention_centered_sm90_config.cu test_attention_split_centered.cu)

# The short-query kernel (include/kvq/kernels/decode/): decode and a few queries, GQA
# packing, split-KV; forced through kvq::ShortQueryConfig, and the AutoConfig selection.
_kvq_attention_test(test_attention_decode
  test_attention_decode_int2_pt128.cu test_attention_decode_int4.cu test_attention_decode_pc.cu
  test_attention_decode_rot.cu test_attention_decode_groups.cu)
