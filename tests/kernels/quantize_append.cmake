# GPU tests of kvq::quantize_append (include/kvq/api/quantize_append.cuh): bit-exact
# against kvq::reference::quantize_append. Included by tests/CMakeLists.txt.
kvq_add_gpu_test(test_quantize_append CPU_CASES SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_quantize_append.cu)
if(TARGET test_quantize_append)
  # Next to the other kernel tests, where scripts/device_check.sh looks for them.
  set_target_properties(test_quantize_append PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/kernels)
endif()
# GPU tests of the paged cache (layout::PagedView): quantize-append through block tables
# (byte-exact against the reference, poisoned pools and tables) and attention through them on
# the mma.sync kernel and ([sm90] cases) the Hopper kernel.
kvq_add_gpu_test(test_paged CPU_CASES SM90_CASES SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_paged_append.cu
  ${CMAKE_CURRENT_LIST_DIR}/test_paged_sm80.cu ${CMAKE_CURRENT_LIST_DIR}/test_paged_sm90.cu)
if(TARGET test_paged)
  set_target_properties(test_paged PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/kernels)
  set_tests_properties(test_paged PROPERTIES LABELS "gpu;paged" TIMEOUT 1800)
endif()
if(TEST test_paged_sm90)
  set_tests_properties(test_paged_sm90 PROPERTIES LABELS "gpu;sm90;paged" TIMEOUT 1800)
endif()
