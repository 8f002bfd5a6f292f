# Configures and builds a consumer project one way (STEP = subdirectory|package), then
# runs its executable EXE when RUN is ON. With CUDA_COMPILER, the project is a CUDA one
# built with that nvcc for CUDA_ARCHITECTURES, and the installed kvq is configured with
# CUDA as a user's would be.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

set(_cuda_args)
if(CUDA_COMPILER)
  set(_cuda_args -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES})
endif()
file(REMOVE_RECURSE ${WORK})
if(STEP STREQUAL "package")
  # Install kvq alone (no tests, benchmarks or examples) into a private prefix.
  run(${CMAKE_COMMAND} -S ${KVQ_SRC} -B ${WORK}/kvq-build -G ${GENERATOR} -DKVQ_BUILD_TESTS=OFF
      -DKVQ_BUILD_BENCHMARKS=OFF -DKVQ_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix ${_cuda_args})
  run(${CMAKE_COMMAND} --install ${WORK}/kvq-build)
  run(${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G ${GENERATOR} -DKVQ_CONSUME=package -DCMAKE_PREFIX_PATH=${WORK}/prefix
      ${_cuda_args})
else()
  run(${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G ${GENERATOR} -DKVQ_CONSUME=subdirectory -DKVQ_SOURCE_DIR=${KVQ_SRC}
      ${_cuda_args})
endif()
run(${CMAKE_COMMAND} --build ${WORK}/build)
if(RUN)
  run(${WORK}/build/${EXE})
endif()
