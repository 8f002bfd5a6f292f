# GPU tests of kvq::quantize_append (include/kvq/api/quantize_append.cuh): bit-exact
# against kvq::reference::quantize_append. Included by tests/CMakeLists.txt.
kvq_add_gpu_test(test_quantize_append CPU_CASES SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_quantize_append.cu)
if(TARGET test_quantize_append)
  # Next to the other kernel tests, where scripts/device_check.sh looks for them.
  set_target_properties(test_quantize_append PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/kernels)
endif()
