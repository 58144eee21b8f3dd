/* C[M,N] = alpha * A[M,K] B[N,K]^T + beta * C for a few rows (2 <= M <= SMALL_M): a decode step of a small batch
 * times a Linear's weight [out, in]. OpenBLAS's sgemm packs the weights before multiplying, which for a few rows
 * costs as much as the product; here each weight row is read once, for all M rows at a time, eight lanes wide,
 * on persistent threads that each take a range of weight rows. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"
#include "simd.h"

enum { MAX_WORKERS = 15, SPIN = 200000 };

struct gemm_job {
  int M, N, K, lda, ldb, ldc, parts;
  float alpha, beta;
  const float *A, *B;
  float *C;
};

typedef void (*rows_fn)(const struct gemm_job *, int, int);

INLINE float hsum(v8sf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; i++)
    s += v[i];
  return s;
}

INLINE void put(const struct gemm_job *j, int m, int n, float dot) {
  float *c = j->C + (long)m * j->ldc + n;
  *c = j->beta == 0.0f ? j->alpha * dot : j->alpha * dot + j->beta * *c;
}

/* Weight rows [n0, n1): two at a time against up to four rows of A, eight accumulators. */
INLINE void rows_body(const struct gemm_job *j, int n0, int n1) {
  const int K = j->K, K8 = K - K % LANES;
  int n = n0;
  for (; n + 1 < n1; n += 2) {
    const float *w0 = j->B + (long)n * j->ldb, *w1 = w0 + j->ldb;
    for (int m = 0; m < j->M; m += 4) {
      int rows = j->M - m < 4 ? j->M - m : 4;
      const float *a[4];
      for (int r = 0; r < 4; r++)
        a[r] = j->A + (long)(m + (r < rows ? r : 0)) * j->lda;
      v8sf s0[4] = {0}, s1[4] = {0};
      for (int k = 0; k < K8; k += LANES) {
        v8sf x0 = load(w0 + k), x1 = load(w1 + k);
        for (int r = 0; r < 4; r++) {
          v8sf y = load(a[r] + k);
          s0[r] += y * x0;
          s1[r] += y * x1;
        }
      }
      for (int r = 0; r < rows; r++) {
        float d0 = hsum(s0[r]), d1 = hsum(s1[r]);
        for (int k = K8; k < K; k++) {
          d0 += a[r][k] * w0[k];
          d1 += a[r][k] * w1[k];
        }
        put(j, m + r, n, d0);
        put(j, m + r, n + 1, d1);
      }
    }
  }
  for (; n < n1; n++) { /* an odd last row */
    const float *w = j->B + (long)n * j->ldb;
    for (int m = 0; m < j->M; m++) {
      const float *a = j->A + (long)m * j->lda;
      v8sf s = {0};
      for (int k = 0; k < K8; k += LANES)
        s += load(a + k) * load(w + k);
      float d = hsum(s);
      for (int k = K8; k < K; k++)
        d += a[k] * w[k];
      put(j, m, n, d);
    }
  }
}

static void rows_base(const struct gemm_job *j, int n0, int n1) { rows_body(j, n0, n1); }
AVX2_FMA static void rows_avx2(const struct gemm_job *j, int n0, int n1) { rows_body(j, n0, n1); }

static rows_fn rows_kernel;

static void run_part(const struct gemm_job *j, int part) {
  /* Ranges of an even number of weight rows, so each part runs the two-row loop. */
  long per = ((long)j->N / j->parts + 1) & ~1L;
  long n0 = per * part, n1 = n0 + per < j->N ? n0 + per : j->N;
  if (part == j->parts - 1)
    n1 = j->N;
  if (n0 < n1)
    rows_kernel(j, (int)n0, (int)n1);
}

/* The pool: workers spin a while on the job counter (the next product of a step comes within microseconds),
 * then sleep on the condition variable. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static const struct gemm_job *current;
static atomic_long generation;
static atomic_int remaining;
static int workers = -1; /* -1: not started; 0: run on the caller only */
static int enabled = 1;   /* MLX_MQA_SMALL_GEMM=0 leaves every product to sgemm (for A/B timing) */

static void *worker(void *arg) {
  int part = (int)(long)arg;
  long seen = 0;
  for (;;) {
    long g;
    int spins = 0;
    while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen && spins < SPIN)
      spins++;
    if (g == seen) {
      pthread_mutex_lock(&mu);
      while ((g = atomic_load(&generation)) == seen)
        pthread_cond_wait(&wake, &mu);
      pthread_mutex_unlock(&mu);
    }
    seen = g;
    const struct gemm_job *j = current;
    if (part < j->parts)
      run_part(j, part);
    atomic_fetch_sub_explicit(&remaining, 1, memory_order_acq_rel);
  }
  return 0;
}

static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;

/* A forked child has none of the workers: it starts its own pool on first use. */
static void after_fork_in_child(void) {
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
  mu = start_mu = call_mu = fresh;
  wake = fresh_cond;
  workers = -1;
}

static void start_pool(void) {
  pthread_mutex_lock(&start_mu);
  if (workers < 0) {
    const char *env = getenv("MLX_MQA_SMALL_GEMM");
    enabled = !(env && strcmp(env, "0") == 0);
    rows_kernel = has_avx2_fma() ? rows_avx2 : rows_base;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cores > 1 ? (int)(cores - 1 < MAX_WORKERS ? cores - 1 : MAX_WORKERS) : 0, started = 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (pthread_t t; started < want && pthread_create(&t, &attr, worker, (void *)(long)(started + 1)) == 0;)
      started++;
    pthread_attr_destroy(&attr);
    workers = started;
    pthread_atfork(0, 0, after_fork_in_child);
  }
  pthread_mutex_unlock(&start_mu);
}

/* 1 when it computed C, 0 when the product is not one it takes (the caller uses sgemm). */
int mlx_mqa_small_gemm(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                       float beta, float *C, int ldc) {
  if (M < 2 || M > SMALL_M || N < 2 || K < 1)
    return 0;
  if (workers < 0)
    start_pool();
  if (!enabled)
    return 0;
  struct gemm_job j = {M, N, K, lda, ldb, ldc, 1, alpha, beta, A, B, C};
  /* Parts: enough work per thread to pay for waking it (about 64k multiply-adds). */
  long parts = (long)M * N * K / 65536 + 1;
  j.parts = (int)(parts < workers + 1 ? parts : workers + 1);
  if (j.parts == 1 || pthread_mutex_trylock(&call_mu) != 0) { /* small, or another thread holds the pool */
    j.parts = 1;
    run_part(&j, 0);
    return 1;
  }
  current = &j;
  atomic_store(&remaining, workers);
  pthread_mutex_lock(&mu);
  atomic_fetch_add_explicit(&generation, 1, memory_order_release);
  pthread_cond_broadcast(&wake);
  pthread_mutex_unlock(&mu);
  run_part(&j, 0);
  while (atomic_load_explicit(&remaining, memory_order_acquire) > 0)
    ;
  pthread_mutex_unlock(&call_mu);
  return 1;
}
