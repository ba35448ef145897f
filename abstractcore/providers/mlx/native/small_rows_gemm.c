/* cblas_sgemm with products of a few rows computed here (blas_small_rows.py explains why).
 *
 * Loaded with RTLD_GLOBAL before the BLAS joins the global scope, this definition of
 * cblas_sgemm is the one MLX's CPU backend binds to. A row-major product c = a . b^T or
 * c = a . b with a (m x k, m <= MAX_ROWS) not transposed, alpha 1 and beta 0 runs the AVX-512
 * kernels below: b^T for nn.Linear's (out x in) weights and attention's keys, b for
 * attention's values. Every other call goes to the next cblas_sgemm (the BLAS's).
 *
 * The b^T kernel reads each weight once, in its own layout: a block of NB weight rows is
 * multiplied by every activation row, MB rows at a time, while the next block is prefetched
 * into L2. (MKL and OpenBLAS copy b into a packed buffer first, which at a few rows costs as
 * much as the product.) Each output is one dot product with 16 partial sums over k, added up
 * in one fixed order; the b kernel sums each output over k in order. So an output's value
 * does not depend on m, on the row's position in the batch, or on how the columns are split
 * between threads. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
enum { MAX_ROWS = 40, NB = 6, MB = 4, PV = 4 };
/* Below this many weights (n * k) a product runs on the calling thread: waking the second
 * thread costs more than it saves. */
enum { THREADED_WEIGHTS = 65536 };

static sgemm_fn next_sgemm;
static volatile int enabled; /* set by abstractcore_small_rows_init on a CPU that has the kernel */
static int supported;
static long computed;

#define AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

/* The sums of four vectors' lanes: halves, then quarters, then pairs, then the last pair;
 * the same order for every output. */
INLINE AVX512 __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  __m256 h0 = _mm256_add_ps(_mm512_castps512_ps256(v0), _mm512_extractf32x8_ps(v0, 1));
  __m256 h1 = _mm256_add_ps(_mm512_castps512_ps256(v1), _mm512_extractf32x8_ps(v1, 1));
  __m256 h2 = _mm256_add_ps(_mm512_castps512_ps256(v2), _mm512_extractf32x8_ps(v2, 1));
  __m256 h3 = _mm256_add_ps(_mm512_castps512_ps256(v3), _mm512_extractf32x8_ps(v3, 1));
  __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(h0, h1), _mm256_hadd_ps(h2, h3));
  return _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
}

/* c[0..rows, 0..cols] = a[0..rows] . b[0..cols]^T; rows <= MB, cols <= NB (constants after
 * inlining, so the accumulators live in registers). Prefetches `ahead` (the next block of
 * weight rows) when it is not NULL. */
INLINE AVX512 void block(const int rows, const int cols, int k, const float *a, int lda,
                         const float *b, int ldb, float *c, int ldc, const float *ahead) {
  __m512 acc[MB][NB];
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) acc[i][j] = _mm512_setzero_ps();
  int p = 0;
  for (; p + 16 <= k; p += 16) {
    if (ahead)
      for (int j = 0; j < cols; j++)
        _mm_prefetch((const char *)(ahead + (size_t)j * ldb + p), _MM_HINT_T1);
    __m512 x[MB];
    for (int i = 0; i < rows; i++) x[i] = _mm512_loadu_ps(a + (size_t)i * lda + p);
    for (int j = 0; j < cols; j++) {
      __m512 w = _mm512_loadu_ps(b + (size_t)j * ldb + p);
      for (int i = 0; i < rows; i++) acc[i][j] = _mm512_fmadd_ps(x[i], w, acc[i][j]);
    }
  }
  if (p < k) { /* the last k % 16 values; the masked-off lanes add zeros */
    __mmask16 m = (__mmask16)((1u << (k - p)) - 1);
    __m512 x[MB];
    for (int i = 0; i < rows; i++) x[i] = _mm512_maskz_loadu_ps(m, a + (size_t)i * lda + p);
    for (int j = 0; j < cols; j++) {
      __m512 w = _mm512_maskz_loadu_ps(m, b + (size_t)j * ldb + p);
      for (int i = 0; i < rows; i++) acc[i][j] = _mm512_fmadd_ps(x[i], w, acc[i][j]);
    }
  }
  __m512 z = _mm512_setzero_ps();
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j += 4) {
      __m128 s = reduce4(acc[i][j], j + 1 < cols ? acc[i][j + 1] : z,
                         j + 2 < cols ? acc[i][j + 2] : z, j + 3 < cols ? acc[i][j + 3] : z);
      float sums[4], *out = c + (size_t)i * ldc + j;
      _mm_storeu_ps(sums, s);
      for (int q = 0; q < 4 && j + q < cols; q++) out[q] = sums[q];
    }
}

/* Columns [n0, n1) of c = a . b^T, for all m rows. */
static AVX512 void columns(int m, int n0, int n1, int k, const float *a, int lda,
                           const float *b, int ldb, float *c, int ldc) {
  int j = n0;
  for (; j + NB <= n1; j += NB) {
    const float *bj = b + (size_t)j * ldb;
    const float *ahead = j + 2 * NB <= n1 ? bj + (size_t)NB * ldb : NULL;
    int i = 0;
    for (; i + MB <= m; i += MB, ahead = NULL)
      block(MB, NB, k, a + (size_t)i * lda, lda, bj, ldb, c + (size_t)i * ldc + j, ldc, ahead);
    const float *ai = a + (size_t)i * lda;
    float *ci = c + (size_t)i * ldc + j;
    switch (m - i) { /* the last rows, fewer than MB */
    case 3: block(3, NB, k, ai, lda, bj, ldb, ci, ldc, ahead); break;
    case 2: block(2, NB, k, ai, lda, bj, ldb, ci, ldc, ahead); break;
    case 1: block(1, NB, k, ai, lda, bj, ldb, ci, ldc, ahead); break;
    }
  }
  for (; j < n1; j++) /* the last columns, fewer than NB */
    for (int i = 0; i < m; i++)
      block(1, 1, k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb,
            c + (size_t)i * ldc + j, ldc, NULL);
}

/* c[0..rows, 0..16 * vectors) = a[0..rows] . b[0..k, same columns] for b in the plain (k x n)
 * layout (attention's weights times values): each output a sum over k in order, the last
 * vector masked to `last`. */
INLINE AVX512 void plain_block(const int rows, int vectors, int k, const float *a, int lda,
                               const float *b, int ldb, float *c, int ldc, __mmask16 last) {
  __m512 acc[MB][PV];
  for (int i = 0; i < rows; i++)
    for (int v = 0; v < PV; v++) acc[i][v] = _mm512_setzero_ps();
  for (int p = 0; p < k; p++) {
    const float *bp = b + (size_t)p * ldb;
    __m512 w[PV];
    for (int v = 0; v < PV; v++) /* past the last vector: a load of nothing */
      w[v] = _mm512_maskz_loadu_ps(v < vectors - 1 ? 0xFFFF : v == vectors - 1 ? last : 0,
                                   bp + 16 * v);
    for (int i = 0; i < rows; i++) {
      __m512 x = _mm512_set1_ps(a[(size_t)i * lda + p]);
      for (int v = 0; v < PV; v++)
        if (v < vectors) acc[i][v] = _mm512_fmadd_ps(x, w[v], acc[i][v]);
    }
  }
  for (int i = 0; i < rows; i++)
    for (int v = 0; v < PV; v++)
      if (v < vectors)
        _mm512_mask_storeu_ps(c + (size_t)i * ldc + 16 * v, v == vectors - 1 ? last : 0xFFFF,
                              acc[i][v]);
}

/* Columns [n0, n1) of c = a . b for b in the plain layout, for all m rows. */
static AVX512 void plain_columns(int m, int n0, int n1, int k, const float *a, int lda,
                                 const float *b, int ldb, float *c, int ldc) {
  for (int j = n0; j < n1; j += 16 * PV) {
    int width = n1 - j < 16 * PV ? n1 - j : 16 * PV;
    int vectors = (width + 15) / 16;
    __mmask16 last = (__mmask16)(0xFFFFu >> (16 * vectors - width));
    const float *bj = b + j;
    int i = 0;
    for (; i + MB <= m; i += MB)
      plain_block(MB, vectors, k, a + (size_t)i * lda, lda, bj, ldb, c + (size_t)i * ldc + j,
                  ldc, last);
    const float *ai = a + (size_t)i * lda;
    float *ci = c + (size_t)i * ldc + j;
    switch (m - i) {
    case 3: plain_block(3, vectors, k, ai, lda, bj, ldb, ci, ldc, last); break;
    case 2: plain_block(2, vectors, k, ai, lda, bj, ldb, ci, ldc, last); break;
    case 1: plain_block(1, vectors, k, ai, lda, bj, ldb, ci, ldc, last); break;
    }
  }
}

static void small_rows(int plain, int m, int n, int k, const float *a, int lda, const float *b,
                       int ldb, float *c, int ldc) {
  int threads = (long)n * k < THREADED_WEIGHTS ? 1 : omp_get_max_threads();
  int unit = plain ? 16 * PV : NB; /* columns per block */
  if (threads <= 1) { /* no parallel region to enter (attention's small products) */
    if (plain) plain_columns(m, 0, n, k, a, lda, b, ldb, c, ldc);
    else columns(m, 0, n, k, a, lda, b, ldb, c, ldc);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int per = ((n + nt - 1) / nt + unit - 1) / unit * unit; /* whole blocks per thread */
    int n0 = t * per, n1 = n0 + per > n ? n : n0 + per;
    if (n0 < n1 && plain) plain_columns(m, n0, n1, k, a, lda, b, ldb, c, ldc);
    else if (n0 < n1) columns(m, n0, n1, k, a, lda, b, ldb, c, ldc);
  }
}

/* Sets the cblas_sgemm every other call goes to and turns the kernel on where the CPU has
 * AVX-512F, AVX-512DQ and FMA; returns 1 when it is on. */
int abstractcore_small_rows_init(void *next) {
  __builtin_cpu_init();
  supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("fma");
  __atomic_store_n(&next_sgemm, (sgemm_fn)next, __ATOMIC_RELEASE);
  enabled = supported;
  return supported;
}

/* Turn the kernel on (1) or off (0), or leave it (-1); returns the products it computed. */
long abstractcore_small_rows_enable(int on) {
  if (on >= 0) enabled = on && supported;
  return __atomic_load_n(&computed, __ATOMIC_RELAXED);
}

/* The largest row count the kernel takes. */
int abstractcore_small_rows_max_rows(void) { return MAX_ROWS; }

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
  sgemm_fn gemm = __atomic_load_n(&next_sgemm, __ATOMIC_ACQUIRE);
  if (enabled && gemm && order == ROW_MAJOR && trans_a == NO_TRANS &&
      (trans_b == TRANS || trans_b == NO_TRANS) && alpha == 1.0f && beta == 0.0f && m >= 1 &&
      m <= MAX_ROWS && n >= 1 && k >= 1 && lda >= k && ldb >= (trans_b == TRANS ? k : n) &&
      ldc >= n) {
    small_rows(trans_b == NO_TRANS, m, n, k, a, lda, b, ldb, c, ldc);
    __atomic_add_fetch(&computed, 1, __ATOMIC_RELAXED);
    return;
  }
  if (!gemm) /* not initialized (blas_small_rows.py always does first): the next definition */
    gemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
