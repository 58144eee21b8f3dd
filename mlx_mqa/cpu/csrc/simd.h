/* Eight float lanes in GCC/Clang vector extensions: AVX2 where a function is compiled for it (AVX2_FMA),
 * two SSE registers in the x86-64 baseline, NEON on arm64. Each kernel is written once, inlined into a
 * baseline and an AVX2 copy, and the copy is picked by CPU feature (a VM may report no CPU model, so
 * target_clones' "arch=" would never pick its copy). */
#ifndef MLX_MQA_SIMD_H
#define MLX_MQA_SIMD_H

#define INLINE static inline __attribute__((always_inline))

typedef float v8sf __attribute__((vector_size(32)));
typedef float v8sf_u __attribute__((vector_size(32), aligned(4), may_alias)); /* unaligned access */
typedef int v8si __attribute__((vector_size(32)));

enum { LANES = 8 };

INLINE v8sf splat(float a) { return (v8sf){a, a, a, a, a, a, a, a}; }
INLINE v8sf load(const float *p) { return *(const v8sf_u *)p; }
INLINE void store(float *p, v8sf v) { *(v8sf_u *)p = v; }

INLINE v8sf vmax(v8sf a, v8sf b) {
  v8si gt = a > b;
  return (v8sf)((gt & (v8si)a) | (~gt & (v8si)b));
}

#if defined(__x86_64__) && defined(__GNUC__)
#define AVX2_FMA __attribute__((target("avx2,fma")))
INLINE int has_avx2_fma(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define AVX2_FMA
INLINE int has_avx2_fma(void) { return 0; }
#endif

#endif
