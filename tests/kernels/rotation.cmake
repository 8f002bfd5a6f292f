# GPU test of the warp-level Hadamard rotation (include/kvq/kernels/common/rotation.cuh).
kvq_add_gpu_test(test_rotation SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_rotation.cu)
if(TARGET test_rotation)
  set_target_properties(test_rotation PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/kernels)
endif()
