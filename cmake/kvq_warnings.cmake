# Warning and precision flags for kvq's own tests, benchmarks and examples (not
# imposed on consumers). Never fast-math: the reference and the kernels must round
# the same way.
function(kvq_target_defaults target)
  target_link_libraries(${target} PRIVATE kvq::kvq)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror=return-type>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall -lineinfo>)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF CUDA_EXTENSIONS OFF)
  target_compile_features(${target} PRIVATE cxx_std_17)
endfunction()
