// Fused CPU kernels for Squeezed Attention over a fixed context.
//
// context_select (any number of query rows, used for prefill): score the level-2 centroids with the
//   queries (the paper's S formula), rank the clusters, take `budget` keys cluster by cluster and return the
//   kept context positions in ascending order. The PyTorch path does the same with a float64 batched matmul
//   plus ~10 passes over a [rows, clusters] block; here each block of rows is scored in registers/L1 and
//   never written out, in float32 (half the work; scores summed in float64): its selection can differ from
//   the float64 one only where two clusters tie to ~1e-6 at the budget's edge (none did in 3,240 head
//   selections on the 8k benchmark pack; tests allow exactly such ties).
// context_decode (decode-sized steps): the same selection scored in float64 (few rows: cheap, and then the
//   same keys as the PyTorch path), then exact attention over sinks + kept keys +
//   observation window, returning the partial output and its log-sum-exp for the merge with the dynamic
//   (user / generated) keys. The clustered keys/values are stored CLUSTER BY CLUSTER (slot i holds context
//   position order[i]) as [key | value] rows, so the keys of a kept cluster are one contiguous run; rows
//   may be float32 or float16 (the pack's own precision; fp16 -> fp32 is exact, so both give the same
//   numbers, fp16 streams half the bytes).
//
// Selection is the algorithm of lookup.ranked_fill (ties broken by cluster index, keys of a cluster in
// position order); tests check that both pick identical keys. Work is split into fixed chunks (not per
// thread), so results do not depend on the thread count. Registered as torch.ops.squeeze_mobile.*.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "simd.h"

namespace {

using namespace squeeze_simd;

// Rows of fp16 storage -> float32 (exact).
inline void to_float(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// --------------------------------------------------------------------------------------------- scoring
// One selecting head's centroid tables. codes_t holds the int8 codes in blocks of 16 centroids, each block
// dimension-major ([Kp/16, D, 16], Kp = K rounded up to a multiple of 16, zero padded): a block is scored
// from one contiguous 16*D-byte run, and a vector of consecutive centroids is one load.
struct HeadTables {
  const int8_t* codes_t;    // [Kp/16, D, 16]
  const float* scales;      // [K] (fp16 values)
  const int64_t* counts;    // [K]
  const int64_t* order;     // [Nc] context positions grouped by cluster
  const int64_t* start;     // [K]
};

constexpr int64_t kKVec = 16;     // centroids per register block (two 8-double vectors)
constexpr int64_t kRowBlock = 8;  // query rows per register block
constexpr int64_t kScoreChunk = 64;  // query rows per work item when scoring many rows (prefill)

// 8 int8 codes widened to doubles (sign-extend + convert: two instructions on AVX-512).
inline v8d load_codes(const int8_t* p) {
  v8d v;
#if defined(__AVX512F__)
  const __m512d x = _mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&v, &x, sizeof v);
#elif defined(__AVX2__)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m256d lo = _mm256_cvtepi32_pd(_mm_cvtepi8_epi32(bytes));
  const __m256d hi = _mm256_cvtepi32_pd(_mm_cvtepi8_epi32(_mm_srli_si128(bytes, 4)));
  std::memcpy(&v, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof lo, &hi, sizeof hi);
#else
  for (int i = 0; i < 8; ++i) v[i] = static_cast<double>(p[i]);
#endif
  return v;
}

// A[r][k] = scale_k * (q_r . code_k) for RB rows and centroids [k_begin, k_end), straight from the int8
// codes: per block of 16 centroids, RB x 2 vector accumulators stay in registers while d runs (a broadcast
// query value times 8 widened codes). Float64 like the PyTorch path (which multiplies by code x scale, exact
// in float64); the two differ only in rounding order.
template <int RB>
void logits_block(const double* q, int64_t D, const int8_t* codes_t, const double* scale, int64_t k_begin,
                  int64_t k_end, int64_t Kp, double* a) {
  for (int64_t k = k_begin; k < k_end; k += kKVec) {
    v8d acc[RB][2] = {};
    const int8_t* block = codes_t + k * D;
    for (int64_t d = 0; d < D; ++d) {
      const v8d c0 = load_codes(block + d * kKVec), c1 = load_codes(block + d * kKVec + 8);
      for (int r = 0; r < RB; ++r) {
        const double x = q[r * D + d];
        acc[r][0] += c0 * x;
        acc[r][1] += c1 * x;
      }
    }
    const v8d s0 = load8(scale + k), s1 = load8(scale + k + 8);
    for (int r = 0; r < RB; ++r) {
      store8(a + r * Kp + k, acc[r][0] * s0);
      store8(a + r * Kp + k + 8, acc[r][1] * s1);
    }
  }
}

// Per-head constants of the scoring (F = double for decode steps, float for prefill blocks), zero/-inf padded
// to Kp so that every loop runs whole vectors: centroid scales, 0/-inf for non-empty/empty (and padding)
// clusters, counts.
template <typename F>
struct HeadScoringT {
  const int8_t* codes_t = nullptr;
  std::vector<F> scale, empty_mask, count;

  void prepare(const HeadTables& t, int64_t K, int64_t Kp) {
    codes_t = t.codes_t;
    scale.assign(Kp, F(0));
    empty_mask.assign(Kp, -std::numeric_limits<F>::infinity());
    count.assign(Kp, F(0));
    for (int64_t k = 0; k < K; ++k) {
      scale[k] = static_cast<F>(t.scales[k]);
      count[k] = static_cast<F>(t.counts[k]);
      if (t.counts[k] > 0) empty_mask[k] = F(0);
    }
  }
};
using HeadScoring = HeadScoringT<double>;
using HeadScoringF32 = HeadScoringT<float>;

// A[r][k] for rows [0, n) of q (already divided by sqrt(D)) and centroids [k_begin, k_end) (multiples of
// 16, or Kp), into a[r * Kp + k].
void logits_rows(const double* q, int64_t n, int64_t D, const HeadScoring& h, int64_t k_begin, int64_t k_end,
                 int64_t Kp, double* a) {
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t rb = std::min(kRowBlock, n - r0);
    const double* qr = q + r0 * D;
    double* ar = a + r0 * Kp;
    switch (rb) {
      case 8: logits_block<8>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 7: logits_block<7>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 6: logits_block<6>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 5: logits_block<5>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 4: logits_block<4>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 3: logits_block<3>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      case 2: logits_block<2>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
      default: logits_block<1>(qr, D, h.codes_t, h.scale.data(), k_begin, k_end, Kp, ar); break;
    }
  }
}

// One row of logits [Kp] -> S_k = E_k / Z in place: E = exp(A - peak) with the peak over non-empty clusters
// (empty and padding ones: E = 0), Z = sum_k N_k E_k (one exp per (row, cluster), as lookup.cluster_scores).
void row_scores(double* e, int64_t Kp, const HeadScoring& h) {
  v8d peak = {} ;
  peak += kNegInf;
  for (int64_t k = 0; k < Kp; k += 8) {
    const v8d v = load8(e + k) + load8(h.empty_mask.data() + k);
    store8(e + k, v);
    peak = v > peak ? v : peak;
  }
  double top = kNegInf;
  for (int i = 0; i < 8; ++i) top = std::max(top, peak[i]);
  v8d total = {};
  for (int64_t k = 0; k < Kp; k += 8) {
    const v8d x = exp8(load8(e + k) - top);
    store8(e + k, x);
    total += x * load8(h.count.data() + k);
  }
  double z = 0.0;
  for (int i = 0; i < 8; ++i) z += total[i];
  const double inv = 1.0 / z;
  for (int64_t k = 0; k < Kp; k += 8) store8(e + k, load8(e + k) * inv);
}

// ---- float32 scoring, for prefill-sized blocks of queries (context_select) ----
// Half the vector work and half the exp cost of float64 per (query, centroid); the selection it gives can
// differ from the float64 PyTorch path only where two clusters' scores agree to ~1e-6 at the budget's edge.

// 16 int8 codes widened to floats.
inline v16f load_codes16(const int8_t* p) {
  v16f v;
#if defined(__AVX512F__)
  const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&v, &x, sizeof v);
#else
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(p[i]);
#endif
  return v;
}

// A[r][k] = scale_k * (q_r . code_k) in float32 for RB rows and all Kp centroids (one 16-centroid block,
// one vector per row, at a time).
template <int RB>
void logits_block_f32(const float* q, int64_t D, const int8_t* codes_t, const float* scale, int64_t Kp, float* a) {
  for (int64_t k = 0; k < Kp; k += kKVec) {
    v16f acc[RB] = {};
    const int8_t* block = codes_t + k * D;
    for (int64_t d = 0; d < D; ++d) {
      const v16f c = load_codes16(block + d * kKVec);
      for (int r = 0; r < RB; ++r) acc[r] += c * q[r * D + d];
    }
    const v16f s = load16(scale + k);
    for (int r = 0; r < RB; ++r) {
      const v16f x = acc[r] * s;
      std::memcpy(a + r * Kp + k, &x, sizeof x);
    }
  }
}

// Adds sum over rows of S_rk (computed in float32, summed in float64) to `scores`; with `logits`, also writes
// the rows' logits A [n, Kp] there (what context_summaries would compute again).
void accumulate_scores_f32(const float* q, int64_t n, int64_t D, const HeadScoringF32& h, int64_t K, int64_t Kp,
                           std::vector<float>& a, double* scores, float* logits = nullptr) {
  a.resize(kRowBlock * Kp);
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t rb = std::min(kRowBlock, n - r0);
    const float* qr = q + r0 * D;
    switch (rb) {
      case 8: logits_block_f32<8>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 7: logits_block_f32<7>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 6: logits_block_f32<6>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 5: logits_block_f32<5>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 4: logits_block_f32<4>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 3: logits_block_f32<3>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      case 2: logits_block_f32<2>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
      default: logits_block_f32<1>(qr, D, h.codes_t, h.scale.data(), Kp, a.data()); break;
    }
    if (logits != nullptr) std::copy(a.data(), a.data() + rb * Kp, logits + r0 * Kp);
    for (int64_t r = 0; r < rb; ++r) {
      float* e = a.data() + r * Kp;
      v16f peak = {};
      peak += -std::numeric_limits<float>::infinity();
      for (int64_t k = 0; k < Kp; k += 16) {
        const v16f v = load16(e + k) + load16(h.empty_mask.data() + k);
        std::memcpy(e + k, &v, sizeof v);
        peak = v > peak ? v : peak;
      }
      float top = -std::numeric_limits<float>::infinity();
      for (int i = 0; i < 16; ++i) top = std::max(top, peak[i]);
      for (int64_t k = 0; k < Kp; ++k) e[k] -= top;
      exp_inplace(e, Kp);
      v16f total = {};
      for (int64_t k = 0; k < Kp; k += 16) total += load16(e + k) * load16(h.count.data() + k);
      const double inv = 1.0 / static_cast<double>(hsum(total));
      for (int64_t k = 0; k < K; ++k) scores[k] += static_cast<double>(e[k]) * inv;
    }
  }
}

// Queries of rows [r0, r0 + n) in float64, divided by sqrt(D) (as the PyTorch path divides: same rounding).
void scaled_queries(const float* q, int64_t n, int64_t D, std::vector<double>& qd) {
  const double sqrt_d = std::sqrt(static_cast<double>(D));
  qd.resize(n * D);
  for (int64_t i = 0; i < n * D; ++i) qd[i] = static_cast<double>(q[i]) / sqrt_d;
}

// ------------------------------------------------------------------------------------------- selection
// Clusters in descending score (stable: ties by index), keys taken cluster by cluster until `budget`
// (the first keys of a cluster in position order when only part of it fits). Appends the kept slot runs
// [begin, end) of the cluster-ordered storage; with `out`, also writes the kept context positions in
// ascending order.
void ranked_fill(const double* scores, const HeadTables& t, int64_t K, int64_t Nc, int64_t first, int64_t budget,
                 std::vector<std::pair<int64_t, int64_t>>& runs, int64_t* out,
                 std::vector<uint8_t>* kept_cluster = nullptr) {
  if (kept_cluster != nullptr) kept_cluster->assign(K, 0);
  // Only the leading clusters are needed: rank the clusters scoring at least the `lead`-th largest score
  // (an O(K) selection on plain doubles), and all of them only if those do not fill the budget.
  thread_local std::vector<double> pick;
  thread_local std::vector<std::pair<double, int64_t>> rank;
  const int64_t lead = std::min<int64_t>(K, 128);
  double floor = -std::numeric_limits<double>::infinity();
  if (lead < K) {
    pick.assign(scores, scores + K);
    std::nth_element(pick.begin(), pick.begin() + (lead - 1), pick.end(), std::greater<double>());
    floor = pick[lead - 1];
  }
  int64_t remaining = budget;
  for (int pass = 0; pass < 2 && remaining > 0; ++pass) {
    rank.clear();
    for (int64_t k = 0; k < K; ++k)  // (-score, index): descending score, ties by lower index
      if (pass == 0 ? scores[k] >= floor : scores[k] < floor) rank.emplace_back(-scores[k], k);
    std::sort(rank.begin(), rank.end());
    for (const auto& [neg_score, c] : rank) {
      const int64_t take = std::min(t.counts[c], remaining);
      if (take > 0) {
        runs.emplace_back(t.start[c], t.start[c] + take);
        if (kept_cluster != nullptr) (*kept_cluster)[c] = 1;
      }
      remaining -= take;
      if (remaining == 0) break;
    }
  }
  if (out == nullptr) return;
  thread_local std::vector<uint8_t> mark;
  mark.assign(Nc, 0);
  for (const auto& run : runs)
    for (int64_t i = run.first; i < run.second; ++i) mark[t.order[i] - first] = 1;
  int64_t n = 0;
  for (int64_t p = 0; p < Nc; ++p)
    if (mark[p]) out[n++] = p + first;
}

// ------------------------------------------------------------------------------------------- attention
constexpr int64_t kBlock = 32;       // keys per online-softmax block; the next block's rows are prefetched
                                     // (kept clusters are short runs, too short for the hardware prefetcher)
constexpr int64_t kAttendChunk = 256;  // at most this many keys per work item (partials merged afterwards)

template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(p + i, 0, 3);
}

// Partial attention state of R query rows: out (unnormalised), running max m and sum l.
struct Partial {
  std::vector<float> out, m, l;
  void reset(int64_t R, int64_t D) {
    out.assign(R * D, 0.f);
    m.assign(R, -std::numeric_limits<float>::infinity());
    l.assign(R, 0.f);
  }
};

// Online-softmax update of RG query rows (head_dim = 16 * DV) with one block of n <= kBlock [key | value]
// rows. Queries and the output accumulators live in registers for the whole block: per key, DV vector
// loads and RG * DV FMAs for the scores, the same again for the values.
template <int RG, int DV>
void block_rows(const float* q, const float* const* kv, int64_t n, float scale, float* m, float* l, float* out) {
  constexpr int D = 16 * DV;
  v16f qv[RG][DV];
  for (int r = 0; r < RG; ++r)
    for (int d = 0; d < DV; ++d) qv[r][d] = load16(q + r * D + 16 * d);
  float s[RG][kBlock];
  for (int64_t j = 0; j < n; ++j) {
    v16f k[DV];
    for (int d = 0; d < DV; ++d) k[d] = load16(kv[j] + 16 * d);
    for (int r = 0; r < RG; ++r) {
      v16f acc = qv[r][0] * k[0];
      for (int d = 1; d < DV; ++d) acc += qv[r][d] * k[d];
      s[r][j] = hsum(acc) * scale;
    }
  }
  float factor[RG];
  for (int r = 0; r < RG; ++r) {
    float mx = m[r];
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[r][j]);
    factor[r] = mx > m[r] ? std::exp(m[r] - mx) : 1.f;  // rescale what was accumulated under the old max
    m[r] = mx;
    for (int64_t j = 0; j < n; ++j) s[r][j] -= mx;
    exp_inplace(s[r], n);
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) sum += s[r][j];
    l[r] = l[r] * factor[r] + sum;
  }
  v16f o[RG][DV];
  for (int r = 0; r < RG; ++r)
    for (int d = 0; d < DV; ++d) o[r][d] = load16(out + r * D + 16 * d) * factor[r];
  for (int64_t j = 0; j < n; ++j) {
    v16f v[DV];
    for (int d = 0; d < DV; ++d) v[d] = load16(kv[j] + D + 16 * d);
    for (int r = 0; r < RG; ++r) {
      const float w = s[r][j];
      for (int d = 0; d < DV; ++d) o[r][d] += v[d] * w;
    }
  }
  for (int r = 0; r < RG; ++r)
    for (int d = 0; d < DV; ++d) std::memcpy(out + r * D + 16 * d, &o[r][d], sizeof(v16f));
}

template <int DV>
void block_all_rows(const float* q, int64_t R, const float* const* kv, int64_t n, float scale, Partial& p) {
  constexpr int D = 16 * DV;
  int64_t r = 0;
  for (; r + 3 <= R; r += 3) block_rows<3, DV>(q + r * D, kv, n, scale, &p.m[r], &p.l[r], &p.out[r * D]);
  for (; r < R; ++r) block_rows<1, DV>(q + r * D, kv, n, scale, &p.m[r], &p.l[r], &p.out[r * D]);
}

// Any head_dim: the same update with plain loops.
void block_generic(const float* q, int64_t R, int64_t D, const float* const* kv, int64_t n, float scale, Partial& p) {
  float s[kBlock];
  for (int64_t r = 0; r < R; ++r) {
    float mx = p.m[r];
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) acc += q[r * D + d] * kv[j][d];
      s[j] = acc * scale;
      mx = std::max(mx, s[j]);
    }
    const float factor = mx > p.m[r] ? std::exp(p.m[r] - mx) : 1.f;
    p.m[r] = mx;
    float* o = p.out.data() + r * D;
    for (int64_t d = 0; d < D; ++d) o[d] *= factor;
    p.l[r] *= factor;
    for (int64_t j = 0; j < n; ++j) {
      const float w = std::exp(s[j] - mx);
      p.l[r] += w;
      for (int64_t d = 0; d < D; ++d) o[d] += w * kv[j][D + d];
    }
  }
}

// Exact attention of R query rows over the listed [key | value] rows (2*D elements each), in one pass with
// a blockwise online softmax (flash-attention style): each row is read once, key and value together.
template <typename T>
void attend(const float* q, int64_t R, int64_t D, const T* const* rows, int64_t L, float scale,
            std::vector<float>& block, Partial& p) {
  for (int64_t b = 0; b < L; b += kBlock) {
    const int64_t n = std::min(kBlock, L - b);
    const float* kv[kBlock];
    if (b == 0)
      for (int64_t j = 0; j < n; ++j) prefetch_row(rows[j], 2 * D);
    for (int64_t j = b + kBlock; j < std::min(L, b + 2 * kBlock); ++j) prefetch_row(rows[j], 2 * D);  // next block
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t j = 0; j < n; ++j) kv[j] = rows[b + j];
    } else {  // fp16 storage: widen the block's rows into an L1-resident float buffer
      block.resize(kBlock * 2 * D);
      for (int64_t j = 0; j < n; ++j) {
        to_float(rows[b + j], block.data() + j * 2 * D, 2 * D);
        kv[j] = block.data() + j * 2 * D;
      }
    }
    switch (D) {
      case 32: block_all_rows<2>(q, R, kv, n, scale, p); break;
      case 64: block_all_rows<4>(q, R, kv, n, scale, p); break;
      case 128: block_all_rows<8>(q, R, kv, n, scale, p); break;
      default: block_generic(q, R, D, kv, n, scale, p); break;
    }
  }
}

// Folds partial b into a (same rows), as two disjoint key sets of one softmax.
void merge_into(Partial& a, const Partial& b, int64_t R, int64_t D) {
  for (int64_t r = 0; r < R; ++r) {
    if (b.l[r] == 0.f) continue;
    const float m = std::max(a.m[r], b.m[r]);
    const float fa = a.l[r] == 0.f ? 0.f : std::exp(a.m[r] - m), fb = std::exp(b.m[r] - m);
    for (int64_t d = 0; d < D; ++d) a.out[r * D + d] = a.out[r * D + d] * fa + b.out[r * D + d] * fb;
    a.l[r] = a.l[r] * fa + b.l[r] * fb;
    a.m[r] = m;
  }
}

// Summaries of the clusters a selection did not keep: each dropped non-empty cluster is one entry of the
// softmax with logit A_rk + log N_k (A: the centroid logit, q.c / sqrt(D)) and value vbar_k (the cluster's mean
// value), so exp(q.c) N vbar stands in for the sum over its keys (SqueezedContext._summaries on the torch path).
// x: n rows of Kp logits with that bias added (-inf: no summary), overwritten with the weights. Writes the
// normalised output rows out [n, D] and lse [n] (a row without summaries: 0 and -inf).
void summary_rows(float* x, int64_t n, int64_t Kp, int64_t K, int64_t D, const float* vbar, float* out, float* lse) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < n; ++r) {
    float* e = x + r * Kp;
    v16f peak = {};
    peak += kNone;
    for (int64_t k = 0; k < Kp; k += 16) {
      const v16f v = load16(e + k);
      peak = v > peak ? v : peak;
    }
    float m = kNone;
    for (int i = 0; i < 16; ++i) m = std::max(m, peak[i]);
    if (m == kNone) {
      std::fill(e, e + Kp, 0.f);
      lse[r] = kNone;
      continue;
    }
    for (int64_t k = 0; k < Kp; ++k) e[k] -= m;
    exp_inplace(e, Kp);
    v16f total = {};
    for (int64_t k = 0; k < Kp; k += 16) total += load16(e + k);
    const float l = hsum(total), inv = 1.f / l;
    for (int64_t k = 0; k < Kp; ++k) e[k] *= inv;
    lse[r] = m + std::log(l);
  }
  // out[r] = sum_k w_rk vbar_k: 4 rows x 64 dimensions of accumulators in registers while k runs
  std::fill(out, out + n * D, 0.f);
  if (D % 64 == 0) {
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
      const int rb = static_cast<int>(std::min<int64_t>(4, n - r0));
      for (int64_t d0 = 0; d0 < D; d0 += 64) {
        v16f acc[4][4] = {};
        for (int64_t k = 0; k < K; ++k) {
          const float* v = vbar + k * D + d0;
          const v16f v0 = load16(v), v1 = load16(v + 16), v2 = load16(v + 32), v3 = load16(v + 48);
          for (int r = 0; r < rb; ++r) {
            const float w = x[(r0 + r) * Kp + k];
            acc[r][0] += v0 * w;
            acc[r][1] += v1 * w;
            acc[r][2] += v2 * w;
            acc[r][3] += v3 * w;
          }
        }
        for (int r = 0; r < rb; ++r)
          for (int j = 0; j < 4; ++j) std::memcpy(out + (r0 + r) * D + d0 + 16 * j, &acc[r][j], sizeof(v16f));
      }
    }
  } else {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const float w = x[r * Kp + k];
        for (int64_t d = 0; d < D; ++d) out[r * D + d] += w * vbar[k * D + d];
      }
  }
}

// One decode head's summaries as a Partial to merge: a: [R, Kp] float64 logits of this head's rows (before
// row_scores), log_counts: log N_k of its KV head (-inf for an empty cluster), kept: the clusters the ranked
// fill took keys from, vbar: [K, D] of its KV head.
void summary_partial(const double* a, int64_t R, int64_t Kp, int64_t K, int64_t D, const double* log_counts,
                     const std::vector<uint8_t>& kept, const float* vbar, Partial& p) {
  thread_local std::vector<float> x, lse;
  x.assign(R * Kp, -std::numeric_limits<float>::infinity());
  lse.resize(R);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k)
      if (!kept[k]) x[r * Kp + k] = static_cast<float>(a[r * Kp + k] + log_counts[k]);  // empty: -inf
  p.reset(R, D);
  summary_rows(x.data(), R, Kp, K, D, vbar, p.out.data(), lse.data());
  for (int64_t r = 0; r < R; ++r)
    if (lse[r] != -std::numeric_limits<float>::infinity()) {  // normalised: m = lse, l = 1 (none: l = 0, skipped)
      p.m[r] = lse[r];
      p.l[r] = 1.f;
    }
}

// ------------------------------------------------------------------------------------------- checks
struct Tables {
  const int8_t* codes_t;
  const float* scales;
  const int64_t* counts;
  const int64_t* order;
  const int64_t* start;
  int64_t Hkv, K, Kp, D, Nc;

  HeadTables head(int64_t kv) const {
    return {codes_t + kv * D * Kp, scales + kv * K, counts + kv * K, order + kv * Nc, start + kv * K};
  }
};

Tables check_tables(const at::Tensor& q, const at::Tensor& codes_t, const at::Tensor& scales, const at::Tensor& counts,
                    const at::Tensor& order, const at::Tensor& start) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "queries: contiguous float32 [H, n, D]");
  TORCH_CHECK(codes_t.dim() == 4 && codes_t.size(3) == kKVec && codes_t.scalar_type() == at::kChar
              && codes_t.is_contiguous(), "centroid codes: int8 [Hkv, Kp/16, D, 16] (blocked, padded)");
  TORCH_CHECK(counts.dim() == 2 && counts.scalar_type() == at::kLong && start.scalar_type() == at::kLong
              && order.scalar_type() == at::kLong && counts.is_contiguous() && start.is_contiguous()
              && order.is_contiguous(), "tables: int64, contiguous");
  Tables t{codes_t.data_ptr<int8_t>(), scales.data_ptr<float>(), counts.data_ptr<int64_t>(),
           order.data_ptr<int64_t>(), start.data_ptr<int64_t>(), codes_t.size(0), counts.size(1),
           codes_t.size(1) * kKVec, codes_t.size(2), order.size(1)};
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == t.Hkv * t.K,
              "centroid scales: float32 [Hkv, K]");
  TORCH_CHECK(t.Kp % kKVec == 0 && t.Kp >= t.K && counts.size(0) == t.Hkv && start.size(0) == t.Hkv
              && start.size(1) == t.K && order.size(0) == t.Hkv && q.size(2) == t.D, "centroid tables disagree");
  TORCH_CHECK(q.size(0) % t.Hkv == 0, "selecting heads must be a multiple of KV heads");
  return t;
}

// Cluster scores [Hs, K] (mean over each head's rows), computed in fixed chunks of rows in parallel and
// summed in chunk order (the same result at any thread count).
std::vector<double> all_scores(const at::Tensor& q, const Tables& t, float* logits = nullptr) {
  const int64_t Hs = q.size(0), R = q.size(1), D = t.D, K = t.K, Kp = t.Kp;
  const int64_t heads_per_kv = Hs / t.Hkv;
  const int64_t chunks = std::max<int64_t>(1, (R + kScoreChunk - 1) / kScoreChunk);
  std::vector<HeadScoringF32> prep(t.Hkv);
  for (int64_t kv = 0; kv < t.Hkv; ++kv) prep[kv].prepare(t.head(kv), K, Kp);
  std::vector<double> partial(Hs * chunks * K, 0.0);
  const float* qp = q.data_ptr<float>();
  const float inv_sqrt_d = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, Hs * chunks, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> qf, a;
    for (int64_t item = b; item < e; ++item) {
      const int64_t h = item / chunks, chunk = item % chunks;
      const int64_t r0 = chunk * kScoreChunk, n = std::min(kScoreChunk, R - r0);
      if (n <= 0) continue;
      qf.assign(qp + (h * R + r0) * D, qp + (h * R + r0 + n) * D);
      for (auto& x : qf) x *= inv_sqrt_d;
      accumulate_scores_f32(qf.data(), n, D, prep[h / heads_per_kv], K, Kp, a, partial.data() + item * K,
                            logits != nullptr ? logits + (h * R + r0) * Kp : nullptr);
    }
  });
  std::vector<double> scores(Hs * K, 0.0);
  for (int64_t h = 0; h < Hs; ++h)
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      for (int64_t k = 0; k < K; ++k) scores[h * K + k] += partial[(h * chunks + chunk) * K + k];
  for (auto& s : scores) s /= static_cast<double>(R);
  return scores;
}

// ------------------------------------------------------------------------------------------------ ops
// q [Hs, R, D]: Hs = KV heads (one selection per KV group, the group's query rows pooled) or query heads.
// Returns the kept context positions [Hs, budget], ascending.
at::Tensor select_into(const at::Tensor& q, const at::Tensor& codes_t, const at::Tensor& scales,
                       const at::Tensor& counts, const at::Tensor& order, const at::Tensor& start, int64_t first,
                       int64_t budget, float* logits) {
  const Tables t = check_tables(q, codes_t, scales, counts, order, start);
  TORCH_CHECK(budget >= 0 && budget <= t.Nc, "budget must be in [0, clustered keys]");
  const int64_t Hs = q.size(0), heads_per_kv = Hs / t.Hkv;
  const std::vector<double> scores = all_scores(q, t, logits);
  auto kept = at::empty({Hs, budget}, counts.options());
  int64_t* keptp = kept.data_ptr<int64_t>();
  at::parallel_for(0, Hs, 1, [&](int64_t b, int64_t e) {
    std::vector<std::pair<int64_t, int64_t>> runs;
    for (int64_t h = b; h < e; ++h) {
      runs.clear();
      ranked_fill(scores.data() + h * t.K, t.head(h / heads_per_kv), t.K, t.Nc, first, budget, runs,
                  keptp + h * budget);
    }
  });
  return kept;
}

at::Tensor context_select(const at::Tensor& q, const at::Tensor& codes_t, const at::Tensor& scales,
                          const at::Tensor& counts, const at::Tensor& order, const at::Tensor& start, int64_t first,
                          int64_t budget) {
  return select_into(q, codes_t, scales, counts, order, start, first, budget, nullptr);
}

// context_select that also returns the rows' centroid logits [Hs, R, Kp] (float32, as scored), which
// context_summaries then takes instead of scoring the rows again.
std::tuple<at::Tensor, at::Tensor> context_select_logits(const at::Tensor& q, const at::Tensor& codes_t,
                                                         const at::Tensor& scales, const at::Tensor& counts,
                                                         const at::Tensor& order, const at::Tensor& start,
                                                         int64_t first, int64_t budget) {
  auto logits = at::empty({q.size(0), q.size(1), codes_t.size(1) * kKVec}, q.options());
  auto kept = select_into(q, codes_t, scales, counts, order, start, first, budget, logits.data_ptr<float>());
  return {kept, logits};
}

// Summaries of many query rows (prefill chunks): the dropped clusters of one selection as summary entries
// (summary_partial's softmax in float32: logits A_rk from the int8 codes as context_select scores them, plus
// bias_k = log N_k for a dropped non-empty cluster, -inf otherwise), normalised. q [Hs, R, D]; bias [Hs, K];
// summary_values [Hkv, K, D]. Returns (out [Hs, R, D], lse [Hs, R]; a row with no summaries: 0, -inf).
std::tuple<at::Tensor, at::Tensor> context_summaries(const at::Tensor& q, const at::Tensor& codes_t,
                                                     const at::Tensor& scales, const at::Tensor& bias,
                                                     const at::Tensor& summary_values,
                                                     const c10::optional<at::Tensor>& logits) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "queries: contiguous float32 [H, n, D]");
  TORCH_CHECK(codes_t.dim() == 4 && codes_t.size(3) == kKVec && codes_t.scalar_type() == at::kChar
              && codes_t.is_contiguous(), "centroid codes: int8 [Hkv, Kp/16, D, 16] (blocked, padded)");
  const int64_t Hs = q.size(0), R = q.size(1), D = q.size(2), Hkv = codes_t.size(0), Kp = codes_t.size(1) * kKVec;
  TORCH_CHECK(codes_t.size(2) == D && Hs % Hkv == 0, "queries and centroid codes disagree");
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == Hs && bias.scalar_type() == at::kFloat && bias.is_contiguous(),
              "summary bias: contiguous float32 [Hs, K]");
  const int64_t K = bias.size(1), heads_per_kv = Hs / Hkv;
  const float* given = nullptr;  // the rows' logits from context_select_logits: no second scoring
  if (logits.has_value() && logits->defined()) {
    TORCH_CHECK(logits->dim() == 3 && logits->size(0) == Hs && logits->size(1) == R && logits->size(2) == Kp
                && logits->scalar_type() == at::kFloat && logits->is_contiguous(), "logits: contiguous float32 [Hs, R, Kp]");
    given = logits->data_ptr<float>();
  }
  TORCH_CHECK(K <= Kp && scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == Hkv * K,
              "centroid scales: float32 [Hkv, K]");
  TORCH_CHECK(summary_values.dim() == 3 && summary_values.scalar_type() == at::kFloat && summary_values.is_contiguous()
              && summary_values.size(0) == Hkv && summary_values.size(1) == K && summary_values.size(2) == D,
              "summary values: contiguous float32 [Hkv, K, D]");
  auto out = at::empty({Hs, R, D}, q.options());
  auto lse = at::empty({Hs, R}, q.options());
  const float *qp = q.data_ptr<float>(), *bp = bias.data_ptr<float>(), *vp = summary_values.data_ptr<float>();
  const float* sp = scales.data_ptr<float>();
  const int8_t* cp = codes_t.data_ptr<int8_t>();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  const int64_t chunks = std::max<int64_t>(1, (R + kScoreChunk - 1) / kScoreChunk);
  const float inv_sqrt_d = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, Hs * chunks, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> qf, a, scale, pad_bias;
    for (int64_t item = b; item < e; ++item) {
      const int64_t h = item / chunks, kv = h / heads_per_kv, r0 = (item % chunks) * kScoreChunk;
      const int64_t n = std::min(kScoreChunk, R - r0);
      if (n <= 0) continue;
      scale.assign(Kp, 0.f);
      pad_bias.assign(Kp, -std::numeric_limits<float>::infinity());
      std::copy(sp + kv * K, sp + (kv + 1) * K, scale.begin());
      std::copy(bp + h * K, bp + (h + 1) * K, pad_bias.begin());
      if (given == nullptr) {
        qf.assign(qp + (h * R + r0) * D, qp + (h * R + r0 + n) * D);
        for (auto& x : qf) x *= inv_sqrt_d;
      }
      a.resize(kRowBlock * Kp);
      const int8_t* codes = cp + kv * D * Kp;
      const float* vbar = vp + kv * K * D;
      for (int64_t rb0 = 0; rb0 < n; rb0 += kRowBlock) {
        const int64_t rb = std::min(kRowBlock, n - rb0);
        const float* qr = qf.data() + rb0 * D;
        if (given != nullptr) {
          const float* g = given + (h * R + r0 + rb0) * Kp;
          std::copy(g, g + rb * Kp, a.begin());
        } else {
          switch (rb) {
            case 8: logits_block_f32<8>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 7: logits_block_f32<7>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 6: logits_block_f32<6>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 5: logits_block_f32<5>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 4: logits_block_f32<4>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 3: logits_block_f32<3>(qr, D, codes, scale.data(), Kp, a.data()); break;
            case 2: logits_block_f32<2>(qr, D, codes, scale.data(), Kp, a.data()); break;
            default: logits_block_f32<1>(qr, D, codes, scale.data(), Kp, a.data()); break;
          }
        }
        for (int64_t r = 0; r < rb; ++r)
          for (int64_t k = 0; k < Kp; ++k) a[r * Kp + k] += pad_bias[k];
        const int64_t row = h * R + r0 + rb0;
        summary_rows(a.data(), rb, Kp, K, D, vbar, op + row * D, lp + row);
      }
    }
  });
  return {out, lse};
}

constexpr int64_t kScorePart = 256;  // about this many centroids per scoring work item in decode steps

// The decode step, in one parallel region of five work-shared phases (barriers between them): centroid
// logits per (head, centroid range), S per (head, query row), cluster ranking + kept runs per head,
// attention per (head, chunk of rows), the chunk merge per head. Decode has 3 KV heads and 2 cores here:
// splitting every phase finer than a head keeps both busy.
// Followed keys (SelectionSpec.follow_keys), optional: ``follow`` [Hs, F] context positions (-1: none) the step
// attends besides its selection where the selection did not keep them (each once), ``slot_of`` [Hkv, Nc] the
// cluster-order slot of each clustered position; ``next_follow`` [Hs, F] receives the positions after the F
// clustered rows of the step with the largest softmax weight summed over the head's query rows (-1 past the
// clustered keys), ``fresh`` [Hs] how many followed rows were added.
struct Follow {
  const int64_t* follow = nullptr;
  int64_t F = 0;
  const int64_t* slot_of = nullptr;
  int64_t* next_follow = nullptr;
  int64_t* fresh = nullptr;
};

template <typename T>
void decode_step(const at::Tensor& q, const Tables& t, const at::Tensor& sink_kv, const at::Tensor& clustered_kv,
                 const at::Tensor& window_kv, int64_t budget, float scale, float* op, float* lp, int64_t* keptp,
                 const float* vbar, const Follow& fol = Follow()) {
  const int64_t Hs = q.size(0), R = q.size(1), D = t.D, K = t.K, Kp = t.Kp, Nc = t.Nc, heads_per_kv = Hs / t.Hkv;
  const int64_t first = sink_kv.size(1), W = window_kv.size(1);
  // Equal-sized work items (a fixed count per head, not per thread: results do not depend on the thread count).
  const int64_t L = first + budget + fol.F + W, chunks = std::max<int64_t>(1, (L + kAttendChunk - 1) / kAttendChunk);
  const int64_t chunk_rows = (L + chunks - 1) / chunks;
  const int64_t blocks = Kp / kKVec, parts = std::max<int64_t>(1, (Kp + kScorePart - 1) / kScorePart);
  auto part_begin = [&](int64_t part) { return (blocks * part / parts) * kKVec; };
  std::vector<HeadScoring> prep(t.Hkv);
  for (int64_t kv = 0; kv < t.Hkv; ++kv) prep[kv].prepare(t.head(kv), K, Kp);
  std::vector<double> qd;
  scaled_queries(q.data_ptr<float>(), Hs * R, D, qd);
  std::vector<double> logits(Hs * R * Kp);
  std::vector<double> summary_logits(vbar != nullptr ? Hs * R * Kp : 0);  // logits before row_scores, for summaries
  std::vector<std::vector<uint8_t>> kept_cluster(Hs);
  std::vector<double> log_counts(vbar != nullptr ? t.Hkv * K : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(log_counts.size()); ++i)
    log_counts[i] = t.counts[i] > 0 ? std::log(static_cast<double>(t.counts[i])) : -std::numeric_limits<double>::infinity();
  std::vector<std::vector<const T*>> rows(Hs);
  std::vector<std::vector<int64_t>> clustered_pos(fol.F > 0 ? Hs : 0);  // positions of rows[h][first..first+n)
  std::vector<Partial> partials(Hs * chunks), summaries(vbar != nullptr ? Hs : 0);
  const float* qp = q.data_ptr<float>();
  auto phases = [&]() {
#pragma omp for schedule(static)
    for (int64_t item = 0; item < Hs * parts; ++item) {
      const int64_t h = item / parts, part = item % parts;
      logits_rows(qd.data() + h * R * D, R, D, prep[h / heads_per_kv], part_begin(part), part_begin(part + 1), Kp,
                  logits.data() + h * R * Kp);
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < Hs * R; ++item) {
      if (vbar != nullptr)
        std::copy(logits.data() + item * Kp, logits.data() + (item + 1) * Kp, summary_logits.data() + item * Kp);
      row_scores(logits.data() + item * Kp, Kp, prep[item / R / heads_per_kv]);
    }
#pragma omp for schedule(static)
    for (int64_t h = 0; h < Hs; ++h) {
      thread_local std::vector<double> scores;
      thread_local std::vector<std::pair<int64_t, int64_t>> runs;
      scores.assign(K, 0.0);
      for (int64_t r = 0; r < R; ++r) {
        const double* e = logits.data() + (h * R + r) * Kp;
        for (int64_t k = 0; k < K; ++k) scores[k] += e[k];
      }
      for (auto& x : scores) x /= static_cast<double>(R);
      const int64_t kv = h / heads_per_kv;
      runs.clear();
      ranked_fill(scores.data(), t.head(kv), K, Nc, first, budget, runs, keptp ? keptp + h * budget : nullptr,
                  vbar != nullptr ? &kept_cluster[h] : nullptr);
      // Sinks, kept clusters in memory order (reads then move forward through the cluster-ordered storage),
      // observation window.
      std::sort(runs.begin(), runs.end());
      auto& list = rows[h];
      list.clear();
      list.reserve(L);
      auto add = [&](const at::Tensor& kv_rows, int64_t n_rows, int64_t begin_row, int64_t end_row) {
        const T* base = kv_rows.data_ptr<T>() + kv * n_rows * 2 * D;
        for (int64_t i = begin_row; i < end_row; ++i) list.push_back(base + i * 2 * D);
      };
      add(sink_kv, first, 0, first);
      for (const auto& run : runs) add(clustered_kv, Nc, run.first, run.second);
      if (fol.F > 0) {
        auto& pos = clustered_pos[h];
        pos.clear();
        for (const auto& run : runs)
          for (int64_t i = run.first; i < run.second; ++i) pos.push_back(t.order[kv * Nc + i]);
        int64_t added = 0;
        for (int64_t j = 0; j < fol.F; ++j) {
          const int64_t p = fol.follow[h * fol.F + j];
          if (p < first || p >= first + Nc) continue;
          const int64_t slot = fol.slot_of[kv * Nc + (p - first)];
          bool seen = false;
          for (const auto& run : runs) seen |= slot >= run.first && slot < run.second;
          for (int64_t i = 0; i < j && !seen; ++i) seen = fol.follow[h * fol.F + i] == p;
          if (seen) continue;
          add(clustered_kv, Nc, slot, slot + 1);
          pos.push_back(p);
          ++added;
        }
        fol.fresh[h] = added;
      }
      add(window_kv, W, 0, W);
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < Hs * chunks + static_cast<int64_t>(summaries.size()); ++item) {
      thread_local std::vector<float> block;
      if (item >= Hs * chunks) {  // one head's summaries
        const int64_t h = item - Hs * chunks, kv = h / heads_per_kv;
        summary_partial(summary_logits.data() + h * R * Kp, R, Kp, K, D, log_counts.data() + kv * K, kept_cluster[h],
                        vbar + kv * K * D, summaries[h]);
        continue;
      }
      const int64_t h = item / chunks, begin = (item % chunks) * chunk_rows;
      const int64_t n = std::min(chunk_rows, static_cast<int64_t>(rows[h].size()) - begin);
      partials[item].reset(R, D);
      if (n > 0) attend<T>(qp + h * R * D, R, D, rows[h].data() + begin, n, scale, block, partials[item]);
    }
#pragma omp for schedule(static)
    for (int64_t h = 0; h < Hs; ++h) {  // fold each head's chunks in order, normalise
      Partial& total = partials[h * chunks];
      for (int64_t c = 1; c < chunks; ++c) merge_into(total, partials[h * chunks + c], R, D);
      if (!summaries.empty()) merge_into(total, summaries[h], R, D);
      for (int64_t r = 0; r < R; ++r) {
        const float inv = total.l[r] > 0.f ? 1.f / total.l[r] : 0.f;  // no rows: output 0, lse -inf
        for (int64_t d = 0; d < D; ++d) op[(h * R + r) * D + d] = total.out[r * D + d] * inv;
        lp[h * R + r] = total.m[r] + std::log(total.l[r]);
      }
    }
    if (fol.F > 0) {
#pragma omp for schedule(static)
      for (int64_t h = 0; h < Hs; ++h) {  // where the next step follows: the most weighed clustered rows
        thread_local std::vector<float> key, w;
        thread_local std::vector<std::pair<float, int64_t>> best;
        const auto& pos = clustered_pos[h];
        const int64_t N = pos.size();
        key.resize(D);
        w.resize(N * R);
        for (int64_t i = 0; i < N; ++i) {  // the rows' logits minus their lse, then one vectorised exp
          const T* row = rows[h][first + i];
          if constexpr (std::is_same_v<T, float>) std::copy(row, row + D, key.data());
          else to_float(row, key.data(), D);
          for (int64_t r = 0; r < R; ++r) {
            const float* qr = qp + (h * R + r) * D;
            v16f acc = {};
            int64_t d = 0;
            for (; d + 16 <= D; d += 16) acc += load16(qr + d) * load16(key.data() + d);
            float dot = hsum(acc);
            for (; d < D; ++d) dot += qr[d] * key[d];
            w[i * R + r] = dot * scale - lp[h * R + r];
          }
        }
        exp_inplace(w.data(), N * R);
        best.clear();
        for (int64_t i = 0; i < N; ++i) {
          float sum = 0.f;
          for (int64_t r = 0; r < R; ++r) sum += w[i * R + r];
          best.emplace_back(-sum, i);
        }
        const int64_t n = std::min<int64_t>(fol.F, best.size());
        std::partial_sort(best.begin(), best.begin() + n, best.end());
        for (int64_t j = 0; j < fol.F; ++j) {
          const int64_t next = j < n ? pos[best[j].second] + 1 : -1;
          fol.next_follow[h * fol.F + j] = next >= first && next < first + Nc ? next : -1;
        }
      }
    }
  };
  const int threads = at::get_num_threads();
  if (threads > 1 && !at::in_parallel_region()) {
#pragma omp parallel num_threads(threads)
    phases();
  } else {
    phases();  // the work-sharing loops run whole on this thread
  }
}

// The decode kernels' [key | value] row tables (float32 or float16, one dtype) against the cluster tables.
at::ScalarType check_rows(const Tables& t, const at::Tensor& sink_kv, const at::Tensor& clustered_kv,
                          const at::Tensor& window_kv, int64_t budget) {
  const auto dtype = clustered_kv.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf, "context rows: float32 or float16");
  for (auto* kv : {&sink_kv, &clustered_kv, &window_kv})
    TORCH_CHECK(kv->dim() == 3 && kv->scalar_type() == dtype && kv->is_contiguous() && kv->size(0) == t.Hkv
                && kv->size(2) == 2 * t.D, "context [key | value] rows: contiguous [Hkv, n, 2D], one dtype");
  TORCH_CHECK(clustered_kv.size(1) == t.Nc, "clustered rows and cluster tables disagree");
  TORCH_CHECK(budget >= 0 && budget <= t.Nc, "budget must be in [0, clustered keys]");
  return dtype;
}

// Context rows hold [key | value] (2*D elements, float32 or float16): sink_kv [Hkv, first, 2D],
// clustered_kv [Hkv, Nc, 2D] in cluster order (slot i = position order[i]), window_kv [Hkv, W, 2D].
// summary_values [Hkv, K, D] float32 (optional): the clusters' mean values; given, the dropped clusters join
// the softmax as summaries (summary_partial). Returns (out [Hs, R, D], lse [Hs, R], kept positions
// [Hs, budget] ascending, or [Hs, 0] unless return_positions).
std::tuple<at::Tensor, at::Tensor, at::Tensor> context_decode(
    const at::Tensor& q, const at::Tensor& codes_t, const at::Tensor& scales, const at::Tensor& counts,
    const at::Tensor& order, const at::Tensor& start, const at::Tensor& sink_kv, const at::Tensor& clustered_kv,
    const at::Tensor& window_kv, int64_t budget, double scale, bool return_positions,
    const c10::optional<at::Tensor>& summary_values) {
  const Tables t = check_tables(q, codes_t, scales, counts, order, start);
  const auto dtype = check_rows(t, sink_kv, clustered_kv, window_kv, budget);
  const int64_t Hs = q.size(0), R = q.size(1), D = t.D;
  const float* vbar = nullptr;
  if (summary_values.has_value() && summary_values->defined()) {
    const at::Tensor& v = *summary_values;
    TORCH_CHECK(v.dim() == 3 && v.scalar_type() == at::kFloat && v.is_contiguous() && v.size(0) == t.Hkv
                && v.size(1) == t.K && v.size(2) == D, "summary values: contiguous float32 [Hkv, K, D]");
    vbar = v.data_ptr<float>();
  }
  auto out = at::empty({Hs, R, D}, q.options());
  auto lse = at::empty({Hs, R}, q.options());
  auto kept = at::empty({Hs, return_positions ? budget : 0}, counts.options());
  int64_t* keptp = return_positions ? kept.data_ptr<int64_t>() : nullptr;
  if (dtype == at::kFloat)
    decode_step<float>(q, t, sink_kv, clustered_kv, window_kv, budget, static_cast<float>(scale),
                       out.data_ptr<float>(), lse.data_ptr<float>(), keptp, vbar);
  else
    decode_step<at::Half>(q, t, sink_kv, clustered_kv, window_kv, budget, static_cast<float>(scale),
                          out.data_ptr<float>(), lse.data_ptr<float>(), keptp, vbar);
  return {out, lse, kept};
}

// context_decode with followed keys (decode_step's Follow): follow [Hs, F] int64 positions (-1: none), slot_of
// [Hkv, Nc] int64; returns (out, lse, kept positions [Hs, budget], next follow [Hs, F], fresh [Hs]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> context_decode_follow(
    const at::Tensor& q, const at::Tensor& codes_t, const at::Tensor& scales, const at::Tensor& counts,
    const at::Tensor& order, const at::Tensor& start, const at::Tensor& sink_kv, const at::Tensor& clustered_kv,
    const at::Tensor& window_kv, int64_t budget, double scale, const at::Tensor& summary_values,
    const at::Tensor& follow, const at::Tensor& slot_of) {
  const Tables t = check_tables(q, codes_t, scales, counts, order, start);
  const auto dtype = check_rows(t, sink_kv, clustered_kv, window_kv, budget);
  const int64_t Hs = q.size(0), R = q.size(1), D = t.D;
  TORCH_CHECK(summary_values.dim() == 3 && summary_values.scalar_type() == at::kFloat && summary_values.is_contiguous()
              && summary_values.size(0) == t.Hkv && summary_values.size(1) == t.K && summary_values.size(2) == D,
              "summary values: contiguous float32 [Hkv, K, D]");
  TORCH_CHECK(follow.dim() == 2 && follow.size(0) == Hs && follow.scalar_type() == at::kLong && follow.is_contiguous(),
              "follow: contiguous int64 [Hs, F]");
  TORCH_CHECK(slot_of.dim() == 2 && slot_of.size(0) == t.Hkv && slot_of.size(1) == t.Nc
              && slot_of.scalar_type() == at::kLong && slot_of.is_contiguous(), "slot_of: contiguous int64 [Hkv, Nc]");
  auto out = at::empty({Hs, R, D}, q.options());
  auto lse = at::empty({Hs, R}, q.options());
  auto kept = at::empty({Hs, budget}, counts.options());
  auto next = at::empty({Hs, follow.size(1)}, counts.options());
  auto fresh = at::zeros({Hs}, counts.options());
  Follow fol{follow.data_ptr<int64_t>(), follow.size(1), slot_of.data_ptr<int64_t>(), next.data_ptr<int64_t>(),
             fresh.data_ptr<int64_t>()};
  const float* vbar = summary_values.data_ptr<float>();
  if (dtype == at::kFloat)
    decode_step<float>(q, t, sink_kv, clustered_kv, window_kv, budget, static_cast<float>(scale),
                       out.data_ptr<float>(), lse.data_ptr<float>(), kept.data_ptr<int64_t>(), vbar, fol);
  else
    decode_step<at::Half>(q, t, sink_kv, clustered_kv, window_kv, budget, static_cast<float>(scale),
                          out.data_ptr<float>(), lse.data_ptr<float>(), kept.data_ptr<int64_t>(), vbar, fol);
  return {out, lse, kept, next, fresh};
}

}  // namespace

TORCH_LIBRARY(squeeze_mobile, m) {
  m.def("context_select(Tensor q, Tensor centroid_codes_t, Tensor centroid_scales, Tensor counts, Tensor order, "
        "Tensor start, int first, int budget) -> Tensor");
  m.def("context_decode(Tensor q, Tensor centroid_codes_t, Tensor centroid_scales, Tensor counts, Tensor order, "
        "Tensor start, Tensor sink_kv, Tensor clustered_kv, Tensor window_kv, int budget, float scale, "
        "bool return_positions=False, Tensor? summary_values=None) -> (Tensor, Tensor, Tensor)");
  m.def("context_decode_follow(Tensor q, Tensor centroid_codes_t, Tensor centroid_scales, Tensor counts, "
        "Tensor order, Tensor start, Tensor sink_kv, Tensor clustered_kv, Tensor window_kv, int budget, float scale, "
        "Tensor summary_values, Tensor follow, Tensor slot_of) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("context_select_logits(Tensor q, Tensor centroid_codes_t, Tensor centroid_scales, Tensor counts, "
        "Tensor order, Tensor start, int first, int budget) -> (Tensor, Tensor)");
  m.def("context_summaries(Tensor q, Tensor centroid_codes_t, Tensor centroid_scales, Tensor bias, "
        "Tensor summary_values, Tensor? logits=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(squeeze_mobile, CPU, m) {
  m.impl("context_select", &context_select);
  m.impl("context_decode", &context_decode);
  m.impl("context_decode_follow", &context_decode_follow);
  m.impl("context_select_logits", &context_select_logits);
  m.impl("context_summaries", &context_summaries);
}
