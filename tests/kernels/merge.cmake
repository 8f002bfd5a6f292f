# GPU tests of kvq::merge_states (include/kvq/api/merge.cuh).
kvq_add_gpu_test(test_merge SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_merge.cu)
if(TARGET test_merge)
  set_target_properties(test_merge PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/kernels)
endif()
