/* T5 attention on CPU for long inputs: out = softmax(Q K^T + terms) V, unscaled, grouped K/V heads.
 *
 * MLX's CPU elementwise kernels are scalar and single-threaded, and a softmax over 2048 x 2048 scores per
 * head is three of them; here each thread takes blocks of query rows (one input, one head) and runs
 * Q K^T and P V on the single-threaded OpenBLAS instance, with the additive terms, max, exp and sum in
 * one cached block, eight lanes at a time. Operands are strided views (last axis contiguous), so the
 * caller copies nothing; the terms (T5's position bias view and the padding) are read in place.
 * exp is 2**f * 2**n with the same degree-5 polynomial as mlx_mqa/models/attention.py.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"
#include "simd.h"

enum { MAX_TERMS = 2, MAX_THREADS = 64 };

/* Strides are in elements; the last axis of every operand is contiguous. */
struct operand {
  const float *p;
  long b, h, row;
};

typedef float (*row_fn)(float *, int, const float *, const float *);

struct job {
  struct operand q, k, v, terms[MAX_TERMS];
  float *out;
  long out_b, out_h, out_row;
  int nterms, H, group, L, S, D, rows, blocks, units;
  sgemm_fn gemm;
  sgemv_fn gemv;
  row_fn softmax_row;
  int next;   /* the next unit to take, atomically */
  int failed; /* a worker could not get its buffer */
};

/* The polynomial's coefficients, highest degree first: 2**f on [-1/2, 1/2], relative error <= 1.5e-7. */
#define C5 0.0013268870534375f
#define C4 0.0096754767000675f
#define C3 0.0555073693394661f
#define C2 0.24022121727466583f
#define C1 0.6931469440460205f
#define C0 1.0000001192092896f
#define LOG2E 1.4426950408889634f

/* exp(x) for x <= 0 (x = score - row max): 2**f * 2**n, f in [-1/2, 1/2]; n == 0 below 2**-127 gives 0. */
INLINE v8sf exp_nonpositive(v8sf x) {
  v8sf u = vmax(x * splat(LOG2E), splat(-127.0f));
  v8si n = __builtin_convertvector(u + splat(127.5f), v8si); /* u + 127.5 >= 0.5: truncation rounds */
  v8sf f = u - (__builtin_convertvector(n, v8sf) - splat(127.0f));
  v8sf p = ((((splat(C5) * f + splat(C4)) * f + splat(C3)) * f + splat(C2)) * f + splat(C1)) * f + splat(C0);
  return p * (v8sf)(n << 23);
}

INLINE float exp_nonpositive1(float x) { /* the same, one value: the tail of a row */
  float u = x * LOG2E > -127.0f ? x * LOG2E : -127.0f;
  int n = (int)(u + 127.5f);
  float f = u - ((float)n - 127.0f), scale;
  unsigned bits = (unsigned)n << 23;
  memcpy(&scale, &bits, sizeof scale);
  return (((((C5 * f + C4) * f + C3) * f + C2) * f + C1) * f + C0) * scale;
}

/* x += t0 (+ t1) (either may be 0), then x = exp(x - max x) in place; returns the sum of x. */
INLINE float softmax_row(float *x, int n, const float *t0, const float *t1) {
  int body = n - n % (2 * LANES), j;
  v8sf m0 = splat(-INFINITY), m1 = m0;
  for (j = 0; j < body; j += 2 * LANES) {
    v8sf a = load(x + j), b = load(x + j + LANES);
    if (t0)
      a += load(t0 + j), b += load(t0 + j + LANES);
    if (t1)
      a += load(t1 + j), b += load(t1 + j + LANES);
    store(x + j, a), store(x + j + LANES, b);
    m0 = vmax(m0, a), m1 = vmax(m1, b);
  }
  m0 = vmax(m0, m1);
  float top = -INFINITY;
  for (int i = 0; i < LANES; i++)
    top = m0[i] > top ? m0[i] : top;
  for (; j < n; j++) {
    if (t0)
      x[j] += t0[j];
    if (t1)
      x[j] += t1[j];
    top = x[j] > top ? x[j] : top;
  }
  v8sf vtop = splat(top), s0 = splat(0.0f), s1 = s0;
  for (j = 0; j < body; j += 2 * LANES) {
    v8sf a = exp_nonpositive(load(x + j) - vtop), b = exp_nonpositive(load(x + j + LANES) - vtop);
    store(x + j, a), store(x + j + LANES, b);
    s0 += a, s1 += b;
  }
  s0 += s1;
  float total = 0.0f;
  for (int i = 0; i < LANES; i++)
    total += s0[i];
  for (; j < n; j++)
    total += x[j] = exp_nonpositive1(x[j] - top);
  return total;
}

static float softmax_row_base(float *x, int n, const float *t0, const float *t1) {
  return softmax_row(x, n, t0, t1);
}

/* The same code compiled for AVX2 and FMA, several times faster than the baseline's (docs/linux_cpu_engine.md). */
AVX2_FMA static float softmax_row_avx2(float *x, int n, const float *t0, const float *t1) {
  return softmax_row(x, n, t0, t1);
}

static row_fn pick_softmax_row(void) { return has_avx2_fma() ? softmax_row_avx2 : softmax_row_base; }

/* One block of query rows of one input and one head. `buf` holds rows * (S + 1) floats. */
static void run_unit(const struct job *j, int unit, float *buf) {
  int bh = unit / j->blocks, i0 = (unit % j->blocks) * j->rows;
  int b = bh / j->H, h = bh % j->H, g = h / j->group, S = j->S, D = j->D;
  int R = j->L - i0 < j->rows ? j->L - i0 : j->rows;
  float *sums = buf + (size_t)j->rows * S;
  const float *q = j->q.p + b * j->q.b + h * j->q.h + i0 * j->q.row;
  const float *k = j->k.p + b * j->k.b + g * j->k.h;
  const float *v = j->v.p + b * j->v.b + g * j->v.h;
  /* One query row per head (a decode step): sgemv streams K and V once, where sgemm would pack them first.
   * Decided per call, not per block, so blocking never changes a bit. */
  int single = j->L == 1;
  if (single)
    j->gemv(RowMajor, NoTrans, S, D, 1.0f, k, (int)j->k.row, q, 1, 0.0f, buf, 1);
  else
    j->gemm(RowMajor, NoTrans, Trans, R, S, D, 1.0f, q, (int)j->q.row, k, (int)j->k.row, 0.0f, buf, S);
  for (int r = 0; r < R; r++) {
    const float *rows[MAX_TERMS] = {0, 0};
    for (int t = 0; t < j->nterms; t++) {
      const struct operand *o = &j->terms[t];
      rows[t] = o->p + b * o->b + h * o->h + (i0 + r) * o->row;
    }
    sums[r] = j->softmax_row(buf + (size_t)r * S, S, rows[0], rows[1]);
  }
  float *out = j->out + b * j->out_b + h * j->out_h + i0 * j->out_row;
  if (single)
    j->gemv(RowMajor, Trans, S, D, 1.0f, v, (int)j->v.row, buf, 1, 0.0f, out, 1);
  else
    j->gemm(RowMajor, NoTrans, NoTrans, R, D, S, 1.0f, buf, S, v, (int)j->v.row, 0.0f, out, (int)j->out_row);
  for (int r = 0; r < R; r++)
    for (int d = 0; d < D; d++)
      out[r * j->out_row + d] /= sums[r];
}

static void *worker(void *arg) {
  struct job *j = arg;
  float *buf = malloc(((size_t)j->rows * (j->S + 1)) * sizeof(float));
  if (!buf) {
    __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    return 0;
  }
  for (;;) {
    int unit = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
    if (unit >= j->units || __atomic_load_n(&j->failed, __ATOMIC_RELAXED))
      break;
    run_unit(j, unit, buf);
  }
  free(buf);
  return 0;
}

/* ptrs: q, k, v, then `nterms` terms; strides: (b, head, row) of each, in the same order, then of out;
 * dims: B, H, G, L, S, D, rows per block. A decode step's caller may pass a group's heads as its rows.
 * Returns 0; 1 without the single-threaded BLAS; 2 for arguments it does not take; 3 out of memory. */
int mlx_mqa_attention(const float *const *ptrs, const long *strides, const int *dims, int nterms, float *out,
                      int threads) {
  sgemm_fn gemm = mlx_mqa_single_sgemm();
  sgemv_fn gemv = mlx_mqa_single_sgemv();
  if (!gemm || !gemv)
    return 1;
  struct job j = {0};
  int B = dims[0], G = dims[2];
  j.H = dims[1], j.L = dims[3], j.S = dims[4], j.D = dims[5], j.rows = dims[6];
  if (nterms < 0 || nterms > MAX_TERMS || B < 1 || G < 1 || j.H % G || j.L < 1 || j.S < 1 || j.D < 1 ||
      j.rows < 1)
    return 2;
  struct operand *ops[] = {&j.q, &j.k, &j.v, &j.terms[0], &j.terms[1]};
  for (int i = 0; i < 3 + nterms; i++)
    *ops[i] = (struct operand){ptrs[i], strides[3 * i], strides[3 * i + 1], strides[3 * i + 2]};
  const long *o = strides + 3 * (3 + nterms);
  j.out_b = o[0], j.out_h = o[1], j.out_row = o[2];
  j.nterms = nterms, j.group = j.H / G, j.gemm = gemm, j.gemv = gemv, j.out = out;
  j.softmax_row = pick_softmax_row();
  j.blocks = (j.L + j.rows - 1) / j.rows;
  j.units = B * j.H * j.blocks;
  if (threads > j.units)
    threads = j.units;
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  pthread_t tid[MAX_THREADS];
  int started = 0;
  while (started < threads - 1 && pthread_create(&tid[started], 0, worker, &j) == 0)
    started++;
  worker(&j); /* this thread works too; with no thread started it does everything */
  for (int i = 0; i < started; i++)
    pthread_join(tid[i], 0);
  return j.failed ? 3 : 0;
}
