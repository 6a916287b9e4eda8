// PICNN_MULTIVERSION: compile a hot loop for AVX2 and for the baseline x86-64, the version picked when the
// library loads (GCC/Clang target_clones through an ifunc). An extension cannot assume the AVX flags that
// torch's own kernels dispatch to at run time, and a wheel built with -mavx2 would crash older CPUs.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PICNN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define PICNN_MULTIVERSION
#endif
