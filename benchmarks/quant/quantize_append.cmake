# Quantize-and-append against a device-to-device copy of the same bytes (included by
# benchmarks/CMakeLists.txt).
kvq_add_benchmark(bench_quantize_append ${CMAKE_CURRENT_LIST_DIR}/bench_quantize_append.cu)
# Next to the other quant benchmarks, where scripts/device_check.sh looks for them.
set_target_properties(bench_quantize_append PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/quant)
