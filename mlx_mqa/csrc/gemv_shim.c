/* MLX's cblas_sgemm, served by a privately opened OpenBLAS; single-row/column calls go to sgemv.
 *
 * MLX's CPU backend computes every float32 matmul with cblas_sgemm. This library is loaded
 * (RTLD_GLOBAL) before mlx.core so that MLX's cblas_sgemm resolves here. OpenBLAS itself is opened
 * RTLD_LOCAL: loaded globally, its sgemm_ would also replace the MKL one inside PyTorch and make torch
 * 3x slower in the same process (its OpenMP threads and OpenBLAS's fight over the cores).
 * In decoding, most products are a single token times a weight matrix (M == 1), where OpenBLAS's
 * sgemm is 2-4x slower than its sgemv, hence the routing (off when route_gemv == 0).
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112, ConjTrans = 113 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);

static sgemm_fn real_sgemm = 0;
static sgemv_fn real_sgemv = 0;
static int route = 0;

int mlx_mqa_gemv_shim_init(const char *blas_path, int route_gemv) {
  void *h = dlopen(blas_path, RTLD_NOW | RTLD_LOCAL);
  sgemm_fn gemm = h ? (sgemm_fn)dlsym(h, "cblas_sgemm") : 0;
  sgemv_fn gemv = h ? (sgemv_fn)dlsym(h, "cblas_sgemv") : 0;
  if (!gemm || !gemv) return h ? 2 : 1;
  real_sgemm = gemm;
  real_sgemv = gemv;
  route = route_gemv;
  return 0;
}

static int is_trans(int t) { return t == Trans || t == ConjTrans; }

void cblas_sgemm(int order, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
  if (!real_sgemm) /* init failed or never ran: whichever cblas_sgemm comes next (MLX's own BLAS) */
    real_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  if (route && order == RowMajor && M == 1 && N > 1 && K > 0) {
    /* C[1,N] = alpha * a[1,K] op(B)[K,N] + beta * C  ->  y = alpha * op(B)^T a + beta * y */
    int incx = is_trans(transA) ? lda : 1;
    if (is_trans(transB)) /* B stored [N, K] */
      real_sgemv(RowMajor, NoTrans, N, K, alpha, B, ldb, A, incx, beta, C, 1);
    else /* B stored [K, N] */
      real_sgemv(RowMajor, Trans, K, N, alpha, B, ldb, A, incx, beta, C, 1);
    return;
  }
  if (route && order == RowMajor && N == 1 && M > 1 && K > 0) {
    /* C[M,1] = alpha * op(A)[M,K] b[K,1] + beta * C */
    int incx = is_trans(transB) ? 1 : ldb;
    if (is_trans(transA)) /* A stored [K, M] */
      real_sgemv(RowMajor, Trans, K, M, alpha, A, lda, B, incx, beta, C, ldc);
    else /* A stored [M, K] */
      real_sgemv(RowMajor, NoTrans, M, K, alpha, A, lda, B, incx, beta, C, ldc);
    return;
  }
  real_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
