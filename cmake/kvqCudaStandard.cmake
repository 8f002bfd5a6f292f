# kvq_require_cuda_std(target [BUILD_ONLY]): where the including project has CUDA
# enabled, the INTERFACE target asks for C++17 in CUDA sources too (cuda_std_17). A
# project without CUDA (the .hpp headers only) gets nothing CUDA-specific. BUILD_ONLY
# keeps the requirement out of the exported target (the installed package adds it in
# the consumer's project instead, where that project has CUDA).
function(kvq_require_cuda_std target)
  get_property(_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  if("CUDA" IN_LIST _langs)
    if(ARGV1 STREQUAL "BUILD_ONLY")
      set_property(TARGET ${target} APPEND PROPERTY INTERFACE_COMPILE_FEATURES $<BUILD_INTERFACE:cuda_std_17>)
    else()
      set_property(TARGET ${target} APPEND PROPERTY INTERFACE_COMPILE_FEATURES cuda_std_17)
    endif()
  endif()
endfunction()
