/* What the shim's sources share: the CBLAS sgemm/sgemv signatures and the single-threaded instance. */
#ifndef MLX_MQA_SHIM_H
#define MLX_MQA_SHIM_H

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112, ConjTrans = 113 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);

/* The second OpenBLAS instance, fixed at one thread (gemv_shim.c), or 0 when it could not be opened. */
sgemm_fn mlx_mqa_single_sgemm(void);
sgemv_fn mlx_mqa_single_sgemv(void);

/* C = alpha * A B^T + beta * C for 2 <= M <= SMALL_M rows of A (small_gemm.c): 1 when done, 0 when not taken. */
enum { SMALL_M = 4 };
int mlx_mqa_small_gemm(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                       float beta, float *C, int ldc);

#endif
