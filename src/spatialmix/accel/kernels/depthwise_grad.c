/* The weight gradient of a learned depthwise convolution (stride 1, channels_last memory), built by
   spatialmix.native with the machine's C compiler. oneDNN computes it several times slower than
   the forward pass on CPUs (24 ms against 3 ms for 128 x 128 channels of 14 x 14, fp32, one thread;
   65 ms in bf16). Here each thread keeps one kernel row's accumulators for 16 channels in
   registers and streams the images through them, the inputs of a row in a sliding window of
   registers: about 4 ms for the same shapes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CB 16      /* channels per vector */
#define MAXK 9     /* kernel sizes up to this get accumulators in registers */
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

static inline f32x16 load_f32(const float *p) { f32x16 v; memcpy(&v, p, sizeof v); return v; }
static inline f32x16 load_bf16(const uint16_t *p) {
    u16x16 h; memcpy(&h, p, sizeof h);
    return (f32x16)(__builtin_convertvector(h, u32x16) << 16);   /* bf16 is the top half of an fp32 */
}
static inline float scalar_bf16(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }

typedef struct {
    const void *x, *gy; float *partial;
    int bf16, N, C, H, W, Ho, Wo, K, P, chunk;
} job_t;

/* One kernel row i, 16 channels from c0, images n0..n1: acc[j] = sum of gy * x shifted by (i, j). */
#define ROW(T, LOAD, KK) do { \
    f32x16 acc[MAXK]; \
    for (int j = 0; j < KK; j++) acc[j] = (f32x16){0}; \
    for (int n = n0; n < n1; n++) { \
        const T *xn = (const T *)jb->x + (size_t)n * H * W * C + c0; \
        const T *gn = (const T *)jb->gy + (size_t)n * Ho * Wo * C + c0; \
        int ho_lo = P - i > 0 ? P - i : 0, ho_hi = H + P - i < Ho ? H + P - i : Ho; \
        for (int ho = ho_lo; ho < ho_hi; ho++) { \
            const T *g = gn + (size_t)ho * Wo * C, *xr = xn + (size_t)(ho - P + i) * W * C; \
            /* every tap inside the row for wo in [in_lo, in_hi): no bounds checks there */ \
            int in_lo = P < Wo ? P : Wo, in_hi = W + P - KK + 1 < Wo ? W + P - KK + 1 : Wo; \
            if (in_hi < in_lo) in_hi = in_lo; \
            for (int wo = 0; wo < Wo; wo++) { \
                if (wo == in_lo) { \
                    /* a sliding window of the KK inputs in registers: one new load per step */ \
                    f32x16 xs[MAXK]; \
                    if (wo < in_hi) for (int j = 0; j < KK; j++) xs[j] = LOAD(xr + (size_t)(wo - P + j) * C); \
                    for (; wo < in_hi; wo++) { \
                        f32x16 gv = LOAD(g + (size_t)wo * C); \
                        for (int j = 0; j < KK; j++) acc[j] += gv * xs[j]; \
                        for (int j = 0; j + 1 < KK; j++) xs[j] = xs[j + 1]; \
                        if (wo + 1 < in_hi) xs[KK - 1] = LOAD(xr + (size_t)(wo + 1 - P + KK - 1) * C); \
                    } \
                    if (wo == Wo) break; \
                } \
                f32x16 gv = LOAD(g + (size_t)wo * C); \
                for (int j = 0; j < KK; j++) { \
                    int wi = wo - P + j; \
                    if ((unsigned)wi < (unsigned)W) acc[j] += gv * LOAD(xr + (size_t)wi * C); \
                } \
            } \
        } \
    } \
    for (int j = 0; j < KK; j++) for (int c = 0; c < CB; c++) out[(size_t)c * K * K + i * K + j] = acc[j][c]; \
} while (0)

#define ALL_ROWS(T, LOAD) do { \
    for (int i = 0; i < K; i++) switch (K) { \
        case 3: ROW(T, LOAD, 3); break; case 5: ROW(T, LOAD, 5); break; \
        case 7: ROW(T, LOAD, 7); break; case 9: ROW(T, LOAD, 9); break; } \
} while (0)

/* Channels that do not fill a vector, and kernel sizes without a vector path: plain loops. */
static void scalar_block(const job_t *jb, int c0, int cb, int n0, int n1, float *out) {
    int H = jb->H, W = jb->W, C = jb->C, Ho = jb->Ho, Wo = jb->Wo, K = jb->K, P = jb->P;
    for (int c = 0; c < cb; c++) for (int i = 0; i < K; i++) for (int j = 0; j < K; j++) {
        float s = 0.f;
        for (int n = n0; n < n1; n++) for (int ho = 0; ho < Ho; ho++) for (int wo = 0; wo < Wo; wo++) {
            int hi = ho - P + i, wi = wo - P + j;
            if ((unsigned)hi >= (unsigned)H || (unsigned)wi >= (unsigned)W) continue;
            size_t gx = (((size_t)n * Ho + ho) * Wo + wo) * C + c0 + c;
            size_t xx = (((size_t)n * H + hi) * W + wi) * C + c0 + c;
            s += jb->bf16 ? scalar_bf16(((const uint16_t *)jb->gy)[gx]) * scalar_bf16(((const uint16_t *)jb->x)[xx])
                          : ((const float *)jb->gy)[gx] * ((const float *)jb->x)[xx];
        }
        out[(size_t)c * K * K + i * K + j] = s;
    }
}

/* One work item: 16 channels (fewer in the last block) of one chunk of images. */
static void one_item(const job_t *jb, int item) {
    int N = jb->N, C = jb->C, H = jb->H, W = jb->W, Ho = jb->Ho, Wo = jb->Wo, K = jb->K, P = jb->P;
    int nblocks = (C + CB - 1) / CB;
    int c0 = (item % nblocks) * CB, ch = item / nblocks;
    int cb = C - c0 < CB ? C - c0 : CB;
    int n0 = ch * jb->chunk, n1 = n0 + jb->chunk < N ? n0 + jb->chunk : N;
    float *out = jb->partial + ((size_t)ch * C + c0) * K * K;
    if (cb < CB || K > MAXK || K % 2 == 0 || K < 3) scalar_block(jb, c0, cb, n0, n1, out);
    else if (jb->bf16) ALL_ROWS(uint16_t, load_bf16);
    else ALL_ROWS(float, load_f32);
}

/* grad_weight[C][K][K] of a stride-1, dilation-1 depthwise convolution with padding P;
   x: [N][H][W][C], gy: [N][Ho][Wo][C] (channels_last memory), fp32 or bf16 (bf16 != 0).
   Images are summed in fixed chunks of `chunk`, the chunks added in order, so the result does not
   depend on nthreads. The items run on OpenMP threads: built with -fopenmp, this library shares
   torch's libgomp (same soname), so it uses torch's idle threads instead of competing with them.
   Returns 0, or -1 when out of memory. */
int depthwise_weight_grad(const void *x, const void *gy, float *grad_weight, int bf16, int N, int C, int H, int W,
                          int Ho, int Wo, int K, int P, int chunk, int nthreads) {
    if (chunk < 1) chunk = 1;
    if (nthreads < 1) nthreads = 1;
    int nchunk = (N + chunk - 1) / chunk, nitems = nchunk * ((C + CB - 1) / CB);
    size_t per = (size_t)C * K * K;
    float *partial = malloc((size_t)nchunk * per * sizeof(float));
    if (!partial) return -1;
    job_t jb = {x, gy, partial, bf16, N, C, H, W, Ho, Wo, K, P, chunk};
    #pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int item = 0; item < nitems; item++) one_item(&jb, item);
    for (size_t k = 0; k < per; k++) {
        float s = 0.f;
        for (int ch = 0; ch < nchunk; ch++) s += partial[(size_t)ch * per + k];
        grad_weight[k] = s;
    }
    free(partial);
    return 0;
}
