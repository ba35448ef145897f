/* cblas_sgemm with one-row products forwarded to cblas_sgemv (blas_gemv.py explains why).
 *
 * Loaded with RTLD_GLOBAL before OpenBLAS joins the global scope, this definition of
 * cblas_sgemm is the one MLX's CPU backend binds to. A row-major product with M == 1 (a
 * decode step of one sequence) becomes the matrix-vector product it is; every other call goes
 * to OpenBLAS's cblas_sgemm unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

static sgemm_fn real_sgemm;
static sgemv_fn real_sgemv;
static volatile int forwarding = 1;
static long forwarded;

/* The BLAS functions to call (OpenBLAS's, from its own handle). */
void abstractcore_gemv_init(void *sgemm, void *sgemv) {
  real_sgemv = (sgemv_fn)sgemv;
  __atomic_store_n(&real_sgemm, (sgemm_fn)sgemm, __ATOMIC_RELEASE);
}

/* Turn the forwarding on (1) or off (0), or leave it (-1); returns the products forwarded. */
long abstractcore_gemv_forwarding(int on) {
  if (on >= 0) forwarding = on;
  return __atomic_load_n(&forwarded, __ATOMIC_RELAXED);
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
  sgemm_fn gemm = __atomic_load_n(&real_sgemm, __ATOMIC_ACQUIRE);
  if (!gemm) /* not initialized (blas_gemv.py always does first): the next definition */
    gemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  if (forwarding && real_sgemv && order == ROW_MAJOR && m == 1) {
    int incx = trans_a == NO_TRANS ? 1 : lda; /* a's k values: a row, or a column */
    if (trans_b == TRANS) /* b is n x k: c = b . a */
      real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, incx, beta, c, 1);
    else /* b is k x n: c = b^T . a */
      real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, incx, beta, c, 1);
    __atomic_add_fetch(&forwarded, 1, __ATOMIC_RELAXED);
    return;
  }
  gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
