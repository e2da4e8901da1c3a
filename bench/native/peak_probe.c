/* Machine peak probe for `squeeze bench`: the fp32 FMA rate and the int8 dot-product rate this CPU reaches
 * with its widest vector instructions, on 1..N threads.
 *
 *     peak_probe [--threads 1,2] [--seconds 0.1] [--reps 5]
 *
 * Prints one JSON object. Each thread runs 12 independent accumulator chains (8 for the AVX2 int8 sequence,
 * which needs registers for its products; enough to cover the instruction latency times the number of issue
 * ports, so throughput, not latency, bounds the loop) on values that stay in registers: no memory traffic, so the number is the arithmetic ceiling a runtime's kernels can
 * approach, not a GEMM library's achievement (which is what torch's sgemm reference measured before).
 *
 * The instruction set is chosen at compile time; the bench compiles this file on the machine that runs it
 * (-march=native), so the macros below describe this CPU:
 *   fp32: AVX-512F vfmadd (16 lanes) > AVX2+FMA (8 lanes) > NEON vfmaq (4 lanes) > plain C;
 *   int8: AVX-512 VNNI vpdpbusd (64 u8 x s8 MACs) > AVX-VNNI (32) > AVX2 vpmaddubsw + vpmaddwd + vpaddd (32)
 *         > NEON sdot (16) > plain C;
 *   int8_amx (extra, Linux x86 with AMX-INT8): tdpbusd on 16x64 tiles, recorded but not the bench's reference.
 * One op = one multiply or one add (an FMA or a MAC is 2 ops), the unit of the bench's GOP/s.
 *
 * read_bw (GB/s): the memory read bandwidth, each thread streaming over its own buffer of READ_BW_BYTES (far larger
 * than a last-level cache) with wide loads. A decode step that reads its weights and KV cache once is bound by it:
 * the bench divides the bytes a step must read by this rate to get the step's memory floor.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif
#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_AMX 1
#else
#define HAVE_AMX 0
#endif

#define CHAINS 12
#define MAX_THREADS 256

static volatile double sink; /* keeps every kernel's result alive (written by the main thread only) */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------------ fp32 FMA */
#if defined(__AVX512F__)
#define FP32_ISA "avx512f vfmadd231ps zmm"
#define FP32_BITS 512
typedef __m512 vf;
#define VF_SET(x) _mm512_set1_ps(x)
#define VF_FMA(c, a, b) _mm512_fmadd_ps(c, a, b)
static float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#define FP32_ISA "avx2 vfmadd231ps ymm"
#define FP32_BITS 256
typedef __m256 vf;
#define VF_SET(x) _mm256_set1_ps(x)
#define VF_FMA(c, a, b) _mm256_fmadd_ps(c, a, b)
static float vf_sum(vf v) {
    float lane[8];
    _mm256_storeu_ps(lane, v);
    return lane[0] + lane[1] + lane[2] + lane[3] + lane[4] + lane[5] + lane[6] + lane[7];
}
#elif defined(__aarch64__)
#define FP32_ISA "neon fmla v.4s"
#define FP32_BITS 128
typedef float32x4_t vf;
#define VF_SET(x) vdupq_n_f32(x)
#define VF_FMA(c, a, b) vfmaq_f32(b, c, a) /* b + c * a */
static float vf_sum(vf v) { return vaddvq_f32(v); }
#else
#define FP32_ISA "generic C (scalar, compiler's choice)"
#define FP32_BITS 32
typedef float vf;
#define VF_SET(x) (x)
#define VF_FMA(c, a, b) ((c) * (a) + (b))
static float vf_sum(vf v) { return v; }
#endif
#define FP32_OPS_PER_ITER ((double)CHAINS * (FP32_BITS / 32) * 2)

static double fp32_kernel(long iters) {
    /* c <- c * a + b converges to b / (1 - a) = 0.1: no overflow, no denormals */
    const vf a = VF_SET(0.999999f), b = VF_SET(1e-7f);
    vf c0 = VF_SET(0.0f), c1 = VF_SET(0.1f), c2 = VF_SET(0.2f), c3 = VF_SET(0.3f), c4 = VF_SET(0.4f), c5 = VF_SET(0.5f);
    vf c6 = VF_SET(0.6f), c7 = VF_SET(0.7f), c8 = VF_SET(0.8f), c9 = VF_SET(0.9f), c10 = VF_SET(1.0f), c11 = VF_SET(1.1f);
    for (long i = 0; i < iters; i++) {
        c0 = VF_FMA(c0, a, b); c1 = VF_FMA(c1, a, b); c2 = VF_FMA(c2, a, b); c3 = VF_FMA(c3, a, b);
        c4 = VF_FMA(c4, a, b); c5 = VF_FMA(c5, a, b); c6 = VF_FMA(c6, a, b); c7 = VF_FMA(c7, a, b);
        c8 = VF_FMA(c8, a, b); c9 = VF_FMA(c9, a, b); c10 = VF_FMA(c10, a, b); c11 = VF_FMA(c11, a, b);
    }
    return vf_sum(c0) + vf_sum(c1) + vf_sum(c2) + vf_sum(c3) + vf_sum(c4) + vf_sum(c5) + vf_sum(c6) + vf_sum(c7)
          + vf_sum(c8) + vf_sum(c9) + vf_sum(c10) + vf_sum(c11);
}

/* ------------------------------------------------------------------------------------------- int8 dot product */
/* Every variant accumulates u8 x s8 (or s8 x s8) products into int32 lanes. In the dot-product instructions the
 * chain runs through the accumulator; the AVX2 sequence computes its products before the add, so there the u8
 * operand is made opaque every iteration (an empty asm, no instruction) and the s8 operands come from memory,
 * as in a GEMM inner loop; otherwise the compiler would hoist the products out of the loop. */
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#define INT8_ISA "avx512_vnni vpdpbusd zmm"
#define INT8_MACS_PER_STEP 64
typedef __m512i vi;
#define VI_INIT(k) _mm512_set1_epi32(k)
#define VI_A() _mm512_set1_epi8(3)
#define VI_B_DECL const vi b = _mm512_set1_epi8(-2)
#define VI_STEP(c, a, j) _mm512_dpbusd_epi32(c, a, b)
#define VI_OPAQUE(a)
static long vi_sum(vi v) { return (long)_mm512_reduce_add_epi32(v); }
#elif defined(__AVXVNNI__) && defined(__AVX2__)
#define INT8_ISA "avx_vnni vpdpbusd ymm"
#define INT8_MACS_PER_STEP 32
typedef __m256i vi;
#define VI_INIT(k) _mm256_set1_epi32(k)
#define VI_A() _mm256_set1_epi8(3)
#define VI_B_DECL const vi b = _mm256_set1_epi8(-2)
#define VI_STEP(c, a, j) _mm256_dpbusd_avx_epi32(c, a, b)
#define VI_OPAQUE(a)
#define VI_SUM_256 1
#elif defined(__AVX2__)
#define INT8_ISA "avx2 vpmaddubsw + vpmaddwd + vpaddd ymm"
#define INT8_MACS_PER_STEP 32
typedef __m256i vi;
#define VI_INIT(k) _mm256_set1_epi32(k)
#define VI_A() _mm256_set1_epi8(3)
#define VI_B_DECL                                                                                    \
    __m256i bs[INT8_CHAINS];                                                                         \
    const __m256i ones = _mm256_set1_epi16(1);                                                       \
    for (int j = 0; j < INT8_CHAINS; j++) bs[j] = _mm256_set1_epi8((char)(j % 2 ? -1 - j : 1 + j)) /* none 0 */
#define VI_STEP(c, a, j) _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_load_si256(&bs[j])), ones))
#define VI_OPAQUE(a) __asm__ volatile("" : "+x"(a))
#define VI_SUM_256 1
#define INT8_CHAINS 8 /* 16 ymm registers: 8 accumulators, the u8 operand, the ones and the products */
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define INT8_ISA "neon sdot v.4s"
#define INT8_MACS_PER_STEP 16
typedef int32x4_t vi;
#define VI_INIT(k) vdupq_n_s32(k)
#define VI_A() vdupq_n_s8(3)
#define VI_B_DECL const int8x16_t b = vdupq_n_s8(-2)
#define VI_STEP(c, a, j) vdotq_s32(c, a, b)
#define VI_OPAQUE(a)
static long vi_sum(vi v) { return (long)vaddvq_s32(v); }
#else
#define INT8_ISA "generic C (scalar, compiler's choice)"
#define INT8_MACS_PER_STEP 1
typedef uint32_t vi; /* c <- c * a + b: a multiply-add the compiler cannot sum in closed form */
#define VI_INIT(k) (uint32_t)(k + 1)
#define VI_A() 3u
#define VI_B_DECL const vi b = 7u
#define VI_STEP(c, a, j) ((c) * (a) + b)
#define VI_OPAQUE(a) __asm__ volatile("" : "+r"(a)) /* a real multiply, not a shift-and-add by a known 3 */
static long vi_sum(vi v) { return (long)v; }
#endif
#ifdef VI_SUM_256
static long vi_sum(vi v) {
    int32_t lane[8];
    _mm256_storeu_si256((__m256i *)lane, v);
    return (long)lane[0] + lane[1] + lane[2] + lane[3] + lane[4] + lane[5] + lane[6] + lane[7];
}
#endif
#ifndef INT8_CHAINS
#define INT8_CHAINS CHAINS
#endif
#define INT8_OPS_PER_ITER ((double)INT8_CHAINS * INT8_MACS_PER_STEP * 2)

static double int8_kernel(long iters) {
    vi a = VI_A();
    VI_B_DECL;
    /* named accumulators (an array costs register copies), each with its own start value: chains that start
     * equal and take the same steps are one chain to the compiler, which then runs one and multiplies */
    vi c0 = VI_INIT(0), c1 = VI_INIT(1), c2 = VI_INIT(2), c3 = VI_INIT(3), c4 = VI_INIT(4), c5 = VI_INIT(5);
    vi c6 = VI_INIT(6), c7 = VI_INIT(7);
#if INT8_CHAINS == 12
    vi c8 = VI_INIT(8), c9 = VI_INIT(9), c10 = VI_INIT(10), c11 = VI_INIT(11);
#endif
    for (long i = 0; i < iters; i++) {
        VI_OPAQUE(a);
        c0 = VI_STEP(c0, a, 0); c1 = VI_STEP(c1, a, 1); c2 = VI_STEP(c2, a, 2); c3 = VI_STEP(c3, a, 3);
        c4 = VI_STEP(c4, a, 4); c5 = VI_STEP(c5, a, 5); c6 = VI_STEP(c6, a, 6); c7 = VI_STEP(c7, a, 7);
#if INT8_CHAINS == 12
        c8 = VI_STEP(c8, a, 8); c9 = VI_STEP(c9, a, 9); c10 = VI_STEP(c10, a, 10); c11 = VI_STEP(c11, a, 11);
#endif
    }
    long total = vi_sum(c0) + vi_sum(c1) + vi_sum(c2) + vi_sum(c3) + vi_sum(c4) + vi_sum(c5) + vi_sum(c6) + vi_sum(c7);
#if INT8_CHAINS == 12
    total += vi_sum(c8) + vi_sum(c9) + vi_sum(c10) + vi_sum(c11);
#endif
    return (double)total;
}

/* ------------------------------------------------------------------------------------ int8 AMX tiles (extra) */
#if HAVE_AMX
#define AMX_ISA "amx_int8 tdpbusd 16x64"
/* 4 accumulator tiles (0-3) fed by 2 A tiles (4, 5) and 2 B tiles (6, 7): each tdpbusd is 16 x 16 x 64 MACs */
#define AMX_OPS_PER_ITER (4.0 * 16 * 16 * 64 * 2)
static int amx_state = -1; /* -1 not asked, 0 refused, 1 granted */

static int amx_request(void) {
    /* Linux hands out the AMX register state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA) */
    if (amx_state < 0) amx_state = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return amx_state;
}

static double amx_kernel(long iters) {
    struct __attribute__((packed)) { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    _Alignas(64) int8_t tile_data[16 * 64];
    int32_t out[16 * 16];
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    for (int i = 0; i < 16 * 64; i++) tile_data[i] = (int8_t)((i % 7) - 3);
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, tile_data, 64); _tile_loadd(5, tile_data, 64);
    _tile_loadd(6, tile_data, 64); _tile_loadd(7, tile_data, 64);
    for (long i = 0; i < iters; i++) {
        _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    _tile_release();
    return (double)out[0];
}
#endif

/* ------------------------------------------------------------------------------------ memory read bandwidth */
#define READ_BW_BYTES (128L << 20)      /* per thread; the whole buffer is capped at READ_BW_TOTAL */
#define READ_BW_TOTAL (2048L << 20)
typedef uint64_t v4u64 __attribute__((vector_size(32)));  /* GCC/Clang vectors: AVX2/AVX-512 or NEON loads */

static v4u64 *bw_buf;        /* bw_slots regions of bw_words vectors, written once before timing (pages present) */
static long bw_words, bw_slots;
static atomic_int bw_next;   /* each thread of a run takes the next region */

static int bw_setup(int max_threads) {
    long per = READ_BW_BYTES;
    if (per * max_threads > READ_BW_TOTAL) per = READ_BW_TOTAL / max_threads;
    bw_words = per / (long)sizeof(v4u64);
    bw_slots = max_threads;
    bw_buf = aligned_alloc(64, (size_t)(bw_words * bw_slots) * sizeof(v4u64));
    if (!bw_buf) return 0;
    for (long i = 0; i < bw_words * bw_slots; i++) bw_buf[i] = (v4u64){(uint64_t)i, 1, 2, 3};
    return 1;
}

/* `passes` reads of this thread's region; four independent xor chains so loads, not the xor latency, bound it */
static double bw_kernel(long passes) {
    const v4u64 *p = bw_buf + (long)(atomic_fetch_add(&bw_next, 1) % bw_slots) * bw_words;
    v4u64 a = {0}, b = {0}, c = {0}, d = {0};
    for (long r = 0; r < passes; r++) {
        for (long i = 0; i + 4 <= bw_words; i += 4) {
            a ^= p[i]; b ^= p[i + 1]; c ^= p[i + 2]; d ^= p[i + 3];
        }
    }
    v4u64 x = a ^ b ^ c ^ d;
    return (double)(x[0] ^ x[1] ^ x[2] ^ x[3]);
}

/* -------------------------------------------------------------------------------------------- measurement */
typedef double (*kernel_fn)(long);

typedef struct {
    kernel_fn kernel;
    long iters;
    atomic_int *ready, *go;
    double start, end, result;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *job = (thread_job *)arg;
    atomic_fetch_add(job->ready, 1);
    while (!atomic_load(job->go)) { }
    job->start = now();
    job->result = job->kernel(job->iters);
    job->end = now();
    return NULL;
}

/* Wall time of `threads` threads each running kernel(iters), from the first start to the last end. Per-thread
 * seconds go to `each`. Returns a negative number when a thread cannot be created. */
static double run_threads(kernel_fn kernel, long iters, int threads, double *each) {
    pthread_t tid[MAX_THREADS];
    thread_job jobs[MAX_THREADS];
    atomic_int ready = 0, go = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (thread_job){kernel, iters, &ready, &go, 0, 0, 0};
        if (pthread_create(&tid[t], NULL, thread_main, &jobs[t]) != 0) {
            atomic_store(&go, 1);
            for (int u = 0; u < t; u++) pthread_join(tid[u], NULL);
            return -1.0;
        }
    }
    while (atomic_load(&ready) < threads) { }
    atomic_store(&go, 1);
    double first = 1e300, last = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        if (jobs[t].start < first) first = jobs[t].start;
        if (jobs[t].end > last) last = jobs[t].end;
        each[t] = jobs[t].end - jobs[t].start;
        sink += jobs[t].result;
    }
    return last - first;
}

/* Iterations that take about `seconds` on one thread (doubling from a small count; also warms the clock up). */
static long calibrate(kernel_fn kernel, double seconds) {
    long iters = 1 << 12;
    double each[1];
    for (;;) {
        double t = run_threads(kernel, iters, 1, each);
        if (t >= seconds || iters > (1L << 40)) {
            return t > 0 ? (long)((double)iters * seconds / t) + 1 : iters;
        }
        iters *= (t < seconds / 8) ? 8 : 2;
    }
}

/* `iters` iterations of `kernel` on each thread count, best of `reps` runs; prints the kind's JSON entry. The read
 * bandwidth's regions are handed out afresh for every run (bw_next; no effect on the arithmetic kernels). */
static void report_rates(const char *name, const char *isa, int chains, kernel_fn kernel, double ops_per_iter,
                         long iters, const int *threads, int n_threads, int reps, int last) {
    printf("  \"%s\": {\"isa\": \"%s\", \"chains\": %d, \"ops_per_iteration\": %.0f, \"iterations\": %ld, \"results\": [",
           name, isa, chains, ops_per_iter, iters);
    for (int k = 0; k < n_threads; k++) {
        int t = threads[k];
        double best = -1, best_each[MAX_THREADS], each[MAX_THREADS];
        for (int r = 0; r < reps; r++) {
            atomic_store(&bw_next, 0);
            double wall = run_threads(kernel, iters, t, each);
            if (wall < 0) break;
            double rate = (double)t * (double)iters * ops_per_iter / wall / 1e9;
            if (rate > best) {
                best = rate;
                memcpy(best_each, each, sizeof(double) * (size_t)t);
            }
        }
        printf("%s{\"threads\": %d, \"gops\": %.3f, \"per_thread_gops\": [", k ? ", " : "", t, best > 0 ? best : 0.0);
        for (int u = 0; u < t && best > 0; u++) {
            printf("%s%.3f", u ? ", " : "", (double)iters * ops_per_iter / best_each[u] / 1e9);
        }
        printf("]}");
    }
    printf("]}%s\n", last ? "" : ",");
}

static void measure(const char *name, const char *isa, int chains, kernel_fn kernel, double ops_per_iter,
                    const int *threads, int n_threads, double seconds, int reps, int last) {
    report_rates(name, isa, chains, kernel, ops_per_iter, calibrate(kernel, seconds), threads, n_threads, reps, last);
}

/* read_bw: GB/s of `threads` threads each reading its own region, best of `reps` (as the arithmetic peaks); the
 * pass count makes one thread's timed run last about `seconds`. "gops" is then GB/s (one op = one byte read). */
static void measure_read_bw(const int *threads, int n_threads, double seconds, int reps, int last) {
    int most = 1;
    for (int k = 0; k < n_threads; k++) if (threads[k] > most) most = threads[k];
    if (!bw_setup(most)) {
        printf("  \"read_bw\": null%s\n", last ? "" : ",");
        return;
    }
    double each[MAX_THREADS], bytes = (double)(bw_words - bw_words % 4) * sizeof(v4u64);
    atomic_store(&bw_next, 0);
    double one = run_threads(bw_kernel, 1, 1, each);  /* also a warm-up pass */
    long passes = one > 0 ? (long)(seconds / one) + 1 : 1;
    char isa[64];
    snprintf(isa, sizeof isa, "%d-byte vector loads", (int)sizeof(v4u64));
    report_rates("read_bw", isa, 4, bw_kernel, bytes, passes, threads, n_threads, reps, last);
    free(bw_buf);
}

int main(int argc, char **argv) {
    int threads[64], n_threads = 0, reps = 5;
    double seconds = 0.1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            char *p = argv[++i];
            while (*p && n_threads < 64) {
                long t = strtol(p, &p, 10);
                if (t < 1 || t > MAX_THREADS) { fprintf(stderr, "peak_probe: thread counts are 1..%d\n", MAX_THREADS); return 2; }
                threads[n_threads++] = (int)t;
                if (*p == ',') p++;
                else if (*p) { fprintf(stderr, "peak_probe: --threads takes e.g. 1,2\n"); return 2; }
            }
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: peak_probe [--threads 1,2] [--seconds 0.1] [--reps 5]\n");
            return 2;
        }
    }
    if (n_threads == 0) threads[n_threads++] = 1;
    if (seconds <= 0 || reps < 1) { fprintf(stderr, "peak_probe: --seconds > 0 and --reps >= 1\n"); return 2; }
    printf("{\n  \"schema\": \"squeeze-mobile/peak-probe/1\",\n");
    measure("fp32", FP32_ISA, CHAINS, fp32_kernel, FP32_OPS_PER_ITER, threads, n_threads, seconds, reps, 0);
    measure_read_bw(threads, n_threads, seconds, reps, 0);
#if HAVE_AMX
    measure("int8", INT8_ISA, INT8_CHAINS, int8_kernel, INT8_OPS_PER_ITER, threads, n_threads, seconds, reps, 0);
    if (amx_request()) {
        measure("int8_amx", AMX_ISA, 4, amx_kernel, AMX_OPS_PER_ITER, threads, n_threads, seconds, reps, 0);
        printf("  \"int8_amx_note\": null\n}\n");
    } else {
        printf("  \"int8_amx_note\": \"the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)\"\n}\n");
    }
#else
    measure("int8", INT8_ISA, INT8_CHAINS, int8_kernel, INT8_OPS_PER_ITER, threads, n_threads, seconds, reps, 1);
    printf("}\n");
#endif
    return sink == 12345.678 ? 1 : 0; /* never true; reading sink keeps the kernels' work observable */
}
