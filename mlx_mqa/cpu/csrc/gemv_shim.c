/* MLX's cblas_sgemm, served by a privately opened OpenBLAS; single-row/column calls go to sgemv.
 *
 * MLX's CPU backend computes every float32 matmul with cblas_sgemm. This library is loaded
 * (RTLD_GLOBAL) before mlx.core so that MLX's cblas_sgemm resolves here. OpenBLAS itself is opened
 * RTLD_LOCAL: loaded globally, its sgemm_ would also replace the MKL one inside PyTorch and make torch
 * 3x slower in the same process (its OpenMP threads and OpenBLAS's fight over the cores).
 * In decoding, most products are a single token times a weight matrix (M == 1), where OpenBLAS's
 * sgemm is 2-4x slower than its sgemv, hence the routing (off when route_gemv == 0).
 * The BLAS may export plain CBLAS names (Debian's libopenblas) or prefixed ones (the scipy-openblas32
 * wheel: scipy_cblas_sgemm, scipy_openblas_get_config, ...); both are looked up.
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "shim.h"

static sgemm_fn real_sgemm = 0;
static sgemm_fn single_sgemm = 0; /* a second OpenBLAS instance, fixed at one thread */
static sgemv_fn single_sgemv = 0;
static sgemv_fn real_sgemv = 0;
static int route = 0;
static void *blas = 0;
static const char *prefix = "";
static char error[512];
static char info[512];

static const char *const prefixes[] = {"", "scipy_"};

static void *lookup(void *h, const char *pre, const char *name) {
  char full[128];
  snprintf(full, sizeof full, "%s%s", pre, name);
  return dlsym(h, full);
}

/* The same library again in its own link-map namespace: its own thread count, set to one. Attention
 * runs its small products on two CPU streams at once; with the shared multi-threaded instance the two
 * streams' calls contend for the same cores. */
static void open_single(const char *blas_path, const char *pre) {
  void *h = dlmopen(LM_ID_NEWLM, blas_path, RTLD_NOW | RTLD_LOCAL);
  if (!h)
    return;
  typedef void (*threads_fn)(int);
  threads_fn set_threads = (threads_fn)lookup(h, pre, "openblas_set_num_threads");
  sgemm_fn gemm = (sgemm_fn)lookup(h, pre, "cblas_sgemm");
  sgemv_fn gemv = (sgemv_fn)lookup(h, pre, "cblas_sgemv");
  if (!set_threads || !gemm || !gemv) {
    dlclose(h);
    return;
  }
  set_threads(1);
  single_sgemm = gemm;
  single_sgemv = gemv;
}

/* 0: ready; 1: the library cannot be opened; 2: it has no cblas_sgemm/cblas_sgemv. */
int mlx_mqa_gemv_shim_init(const char *blas_path, int route_gemv) {
  void *h = dlopen(blas_path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *e = dlerror();
    snprintf(error, sizeof error, "%s", e ? e : "dlopen failed");
    return 1;
  }
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    sgemm_fn gemm = (sgemm_fn)lookup(h, prefixes[i], "cblas_sgemm");
    sgemv_fn gemv = (sgemv_fn)lookup(h, prefixes[i], "cblas_sgemv");
    if (gemm && gemv) {
      blas = h;
      prefix = prefixes[i];
      real_sgemm = gemm;
      real_sgemv = gemv;
      route = route_gemv;
      open_single(blas_path, prefixes[i]);
      return 0;
    }
  }
  snprintf(error, sizeof error, "%s: no cblas_sgemm/cblas_sgemv (plain or scipy_ prefixed)", blas_path);
  dlclose(h);
  return 2;
}

const char *mlx_mqa_gemv_shim_error(void) { return error; }

sgemm_fn mlx_mqa_single_sgemm(void) { return single_sgemm; }

sgemv_fn mlx_mqa_single_sgemv(void) { return single_sgemv; }

/* "<openblas_get_config()>; core <openblas_get_corename()>", or "" for a BLAS other than OpenBLAS. */
const char *mlx_mqa_blas_info(void) {
  typedef char *(*str_fn)(void);
  str_fn config = blas ? (str_fn)lookup(blas, prefix, "openblas_get_config") : 0;
  str_fn core = blas ? (str_fn)lookup(blas, prefix, "openblas_get_corename") : 0;
  snprintf(info, sizeof info, "%s%s%s", config ? config() : "", core ? "; core " : "", core ? core() : "");
  return info;
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
  if (route && order == RowMajor && !is_trans(transA) && is_trans(transB) &&
      mlx_mqa_small_gemm(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
    return;
  /* A head-sized product (an attention block's Q K^T or P V): one thread, see open_single. */
  if (single_sgemm && (N <= 128 || K <= 128) && (double)M * N * K <= 33554432.0) {
    single_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  real_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
