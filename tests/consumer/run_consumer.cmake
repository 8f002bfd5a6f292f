# Configures, builds and runs the consumer project one way (STEP = subdirectory|package).
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE ${WORK})
if(STEP STREQUAL "package")
  # Install kvq alone (no tests, no CUDA needed) into a private prefix.
  run(${CMAKE_COMMAND} -S ${KVQ_SRC} -B ${WORK}/kvq-build -G ${GENERATOR} -DKVQ_BUILD_TESTS=OFF
      -DKVQ_BUILD_BENCHMARKS=OFF -DKVQ_BUILD_EXAMPLES=OFF -DKVQ_ENABLE_CUDA=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
  run(${CMAKE_COMMAND} --install ${WORK}/kvq-build)
  run(${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G ${GENERATOR} -DKVQ_CONSUME=package -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G ${GENERATOR} -DKVQ_CONSUME=subdirectory -DKVQ_SOURCE_DIR=${KVQ_SRC}
      -DKVQ_ENABLE_CUDA=OFF)
endif()
run(${CMAKE_COMMAND} --build ${WORK}/build)
run(${WORK}/build/consumer)
