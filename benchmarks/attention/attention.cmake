# Fused chunk attention over a quantized cache (included by benchmarks/CMakeLists.txt).
# Compare with torch_sdpa.py (torch flash / cuDNN, bf16) run in the same session.
kvq_add_benchmark(bench_attention ${CMAKE_CURRENT_LIST_DIR}/bench_attention.cu)
set_target_properties(bench_attention PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/attention)
