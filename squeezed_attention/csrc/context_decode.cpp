// Fused CPU kernel for the decode step of Squeezed Attention over a fixed context.
//
// One call per layer does what the in-graph PyTorch path (lookup.py + context_attention.py) does with
// ~25 small ops: score the level-2 centroids with the step's queries (float64, log-space, as the paper's
// S formula), rank the clusters, take `budget` keys cluster by cluster, and run exact attention over
// sinks + kept keys + observation window, returning the partial output and its log-sum-exp for the merge
// with the dynamic (user / generated) keys. The clustered keys/values are stored CLUSTER BY CLUSTER
// (slot i holds context position order[i]), so the keys of a kept cluster are one contiguous run that the
// hardware prefetcher streams; gathering scattered positions instead made the kernel memory-latency bound.
//
// Selection is the same algorithm as lookup.ranked_fill (ties broken by cluster index, keys of a cluster
// in position order); tests check that both pick identical keys. Registered as torch.ops.squeeze_mobile.*.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
// SLEEF's vectorised exp, exported by libtorch_cpu (PyTorch's own vectorised math uses it).
extern "C" __m256d Sleef_expd4_u10(__m256d);
extern "C" __m256 Sleef_expf8_u10(__m256);
#endif

namespace {

// x[i] = exp(x[i]) for a run of values (vectorised where the CPU allows; exp(-inf) = 0).
inline void exp_inplace(double* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__)
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, Sleef_expd4_u10(_mm256_loadu_pd(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

inline void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Sleef_expf8_u10(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline double dot(const double* a, const double* b, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

struct HeadTables {
  const int8_t* codes;      // [K, D] int8 centroid codes
  const float* scales;      // [K] (fp16 values)
  const int64_t* counts;    // [K]
  const int64_t* order;     // [Nc] context positions grouped by cluster
  const int64_t* start;     // [K]
};

// Cluster scores S_k = mean_r exp(A_rk) / sum_l N_l exp(A_rl), A = q . c / sqrt(D), in float64.
// Centroids arrive as int8 codes x one fp16 scale per centroid (as packs store them); code * scale is exact
// in float64, so this is the PyTorch path's float64 arithmetic while streaming 1 byte per element, not 8.
void cluster_scores(const float* q, int64_t R, int64_t D, const HeadTables& t, int64_t K,
                    std::vector<double>& qd, std::vector<double>& logits, std::vector<double>& scores) {
  const double sqrt_d = std::sqrt(static_cast<double>(D));  // divide, as the PyTorch path does (same rounding)
  qd.resize(R * D + D);
  for (int64_t i = 0; i < R * D; ++i) qd[i] = static_cast<double>(q[i]) / sqrt_d;
  double* c = qd.data() + R * D;  // one decoded centroid (code x scale, exact in float64)
  logits.resize((R + 1) * K);
  double* e = logits.data() + R * K;  // scratch for the exponentials
  // A[r][k] = q_r . c_k: decode each centroid once and use it for all R query rows.
  for (int64_t k = 0; k < K; ++k) {
    const int8_t* code = t.codes + k * D;
    const double scale = static_cast<double>(t.scales[k]);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) c[d] = static_cast<double>(code[d]) * scale;
    for (int64_t r = 0; r < R; ++r) logits[r * K + k] = dot(qd.data() + r * D, c, D);
  }
  // One exp per (row, cluster), as lookup.cluster_scores: E = exp(A - peak) over non-empty clusters,
  // Z = sum_k N_k E_k, S_k += E_k / Z; empty clusters score 0.
  scores.assign(K, 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double* a = logits.data() + r * K;
    double peak = kNegInf;
    for (int64_t k = 0; k < K; ++k)
      if (t.counts[k] > 0) peak = std::max(peak, a[k]);
    for (int64_t k = 0; k < K; ++k) e[k] = t.counts[k] > 0 ? a[k] - peak : kNegInf;
    exp_inplace(e, K);
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k) total += e[k] * static_cast<double>(t.counts[k]);
    for (int64_t k = 0; k < K; ++k) scores[k] += e[k] / total;
  }
  for (int64_t k = 0; k < K; ++k) scores[k] /= static_cast<double>(R);
}

// Clusters in descending score (stable: ties by index), keys taken cluster by cluster until `budget`
// (the first keys of a cluster in position order when only part of it fits). Appends the kept slot runs
// [begin, end) of the cluster-ordered storage; with `out`, also writes the kept context positions in
// ascending order (for tests and inspection; the attention itself only needs the runs).
void ranked_fill(const std::vector<double>& scores, const HeadTables& t, int64_t K, int64_t Nc, int64_t first,
                 int64_t budget, std::vector<std::pair<double, int64_t>>& rank, std::vector<uint8_t>& mark,
                 std::vector<std::pair<int64_t, int64_t>>& runs, int64_t* out) {
  // Rank by (-score, index): descending score, ties by lower index (= a stable descending sort). Only the
  // leading clusters are needed, so sort a prefix first and the rest only if the budget is not filled.
  rank.resize(K);
  for (int64_t k = 0; k < K; ++k) rank[k] = {-scores[k], k};
  int64_t sorted = std::min<int64_t>(K, 64);
  std::partial_sort(rank.begin(), rank.begin() + sorted, rank.end());
  int64_t remaining = budget;
  for (int64_t i = 0; i < K && remaining > 0; ++i) {
    if (i == sorted) {
      std::sort(rank.begin() + sorted, rank.end());
      sorted = K;
    }
    const int64_t c = rank[i].second;
    const int64_t take = std::min(t.counts[c], remaining);
    if (take == 0) continue;
    runs.emplace_back(t.start[c], t.start[c] + take);
    remaining -= take;
  }
  if (out == nullptr) return;
  mark.assign(Nc, 0);
  for (const auto& run : runs)
    for (int64_t i = run.first; i < run.second; ++i) mark[t.order[i] - first] = 1;
  int64_t n = 0;
  for (int64_t p = 0; p < Nc; ++p)
    if (mark[p]) out[n++] = p + first;
}

// Rows are read this far ahead with software prefetch: kept clusters are short runs, too short for the
// hardware prefetcher to ramp up on.
constexpr int64_t kPrefetchRows = 8;
constexpr int64_t kBlock = 32;  // keys per online-softmax block

inline void prefetch_row(const float* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(row + i, 0, 3);
}

// s_r = scale * q_r . k for all R rows at once: the key is loaded once and the R sums are independent
// chains (one dot at a time is bound by the latency of its single accumulator).
template <int RR>
inline void row_dots(const float* q, const float* k, int64_t D, float scale, float* s, int64_t stride) {
  float acc[RR] = {};
#pragma omp simd reduction(+ : acc[:RR])
  for (int64_t i = 0; i < D; ++i) {
    const float kv = k[i];
    for (int r = 0; r < RR; ++r) acc[r] += q[r * D + i] * kv;
  }
  for (int r = 0; r < RR; ++r) s[r * stride] = acc[r] * scale;
}

inline void all_row_dots(const float* q, int64_t R, const float* k, int64_t D, float scale, float* s, int64_t stride) {
  int64_t r = 0;
  for (; r + 3 <= R; r += 3) row_dots<3>(q + r * D, k, D, scale, s + r * stride, stride);
  for (; r < R; ++r) row_dots<1>(q + r * D, k, D, scale, s + r * stride, stride);
}

// Exact attention of R query rows over the listed [key | value] rows (2*D floats each), in one pass with
// a blockwise online softmax (flash-attention style): each row is read once, key and value together.
void attend(const float* q, int64_t R, int64_t D, const std::vector<const float*>& rows, float scale,
            std::vector<float>& s, float* out, float* lse) {
  const int64_t L = static_cast<int64_t>(rows.size());
  s.resize(R * kBlock);
  std::vector<float> m(R, -std::numeric_limits<float>::infinity()), l(R, 0.f);
  std::fill(out, out + R * D, 0.f);
  for (int64_t b = 0; b < L; b += kBlock) {
    const int64_t n = std::min(kBlock, L - b);
    for (int64_t j = 0; j < n; ++j) {
      if (b + j + kPrefetchRows < L) prefetch_row(rows[b + j + kPrefetchRows], 2 * D);
      all_row_dots(q, R, rows[b + j], D, scale, s.data() + j, kBlock);
    }
    for (int64_t r = 0; r < R; ++r) {
      float* sr = s.data() + r * kBlock;
      float mx = m[r];
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, sr[j]);
      if (mx > m[r]) {  // rescale what was accumulated under the old maximum
        const float factor = std::exp(m[r] - mx);
        l[r] *= factor;
        for (int64_t d = 0; d < D; ++d) out[r * D + d] *= factor;
        m[r] = mx;
      }
      for (int64_t j = 0; j < n; ++j) sr[j] -= mx;
      exp_inplace(sr, n);
      for (int64_t j = 0; j < n; ++j) l[r] += sr[j];
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* v = rows[b + j] + D;
      for (int64_t r = 0; r < R; ++r) {
        const float w = s[r * kBlock + j];
        float* o = out + r * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += w * v[d];
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const float inv = 1.f / l[r];
    for (int64_t d = 0; d < D; ++d) out[r * D + d] *= inv;
    lse[r] = m[r] + std::log(l[r]);
  }
}

void check_float3(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 3 && t.scalar_type() == at::kFloat && t.is_contiguous(), what, ": contiguous float32 [H, n, D]");
}

// q [Hs, R, D]: Hs = KV heads (one selection per KV group, the group's query rows pooled) or query heads.
// Context rows hold [key | value] (2*D floats): sink_kv [Hkv, first, 2D], clustered_kv [Hkv, Nc, 2D] in
// cluster order (slot i = position order[i]), window_kv [Hkv, W, 2D]. Returns (out [Hs, R, D], lse [Hs, R], kept positions [Hs, budget] ascending, or
// [Hs, 0] unless return_positions).
std::tuple<at::Tensor, at::Tensor, at::Tensor> context_decode(
    const at::Tensor& q, const at::Tensor& centroid_codes, const at::Tensor& centroid_scales,
    const at::Tensor& counts, const at::Tensor& order, const at::Tensor& start,
    const at::Tensor& sink_kv, const at::Tensor& clustered_kv, const at::Tensor& window_kv, int64_t budget,
    double scale, bool return_positions) {
  check_float3(q, "queries");
  for (auto* t : {&sink_kv, &clustered_kv, &window_kv}) check_float3(*t, "context [key | value] rows");
  TORCH_CHECK(centroid_codes.dim() == 3 && centroid_codes.scalar_type() == at::kChar && centroid_codes.is_contiguous(),
              "centroid codes: int8 [Hkv, K, D]");
  TORCH_CHECK(centroid_scales.scalar_type() == at::kFloat && centroid_scales.is_contiguous()
              && centroid_scales.numel() == centroid_codes.size(0) * centroid_codes.size(1),
              "centroid scales: float32 [Hkv, K]");
  const at::Tensor& centroids = centroid_codes;
  TORCH_CHECK(counts.scalar_type() == at::kLong && start.scalar_type() == at::kLong && order.scalar_type() == at::kLong
              && counts.is_contiguous() && start.is_contiguous() && order.is_contiguous(), "tables: int64, contiguous");
  const int64_t Hs = q.size(0), R = q.size(1), D = q.size(2);
  const int64_t Hkv = clustered_kv.size(0), K = centroids.size(1), Nc = order.size(1);
  const int64_t first = sink_kv.size(1), W = window_kv.size(1);
  TORCH_CHECK(Hs % Hkv == 0, "selecting heads must be a multiple of KV heads");
  TORCH_CHECK(clustered_kv.size(1) == Nc && centroids.size(2) == D && clustered_kv.size(2) == 2 * D
              && sink_kv.size(2) == 2 * D && window_kv.size(2) == 2 * D, "tables and key/value rows disagree");
  TORCH_CHECK(budget >= 0 && budget <= Nc, "budget must be in [0, clustered keys]");
  const int64_t heads_per_kv = Hs / Hkv;
  auto out = at::empty({Hs, R, D}, q.options());
  auto lse = at::empty({Hs, R}, q.options());
  auto kept = at::empty({Hs, return_positions ? budget : 0}, counts.options());
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  int64_t* keptp = kept.data_ptr<int64_t>();
  at::parallel_for(0, Hs, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> qd, logits, scores;
    std::vector<std::pair<double, int64_t>> rank;
    std::vector<uint8_t> mark;
    std::vector<float> s;
    std::vector<std::pair<int64_t, int64_t>> runs;
    std::vector<const float*> rows;
    for (int64_t h = begin; h < end; ++h) {
      const int64_t kv = h / heads_per_kv;
      const HeadTables t{centroid_codes.data_ptr<int8_t>() + kv * K * D, centroid_scales.data_ptr<float>() + kv * K,
                         counts.data_ptr<int64_t>() + kv * K, order.data_ptr<int64_t>() + kv * Nc,
                         start.data_ptr<int64_t>() + kv * K};
      const float* qh = qp + h * R * D;
      cluster_scores(qh, R, D, t, K, qd, logits, scores);
      runs.clear();
      ranked_fill(scores, t, K, Nc, first, budget, rank, mark, runs, return_positions ? keptp + h * budget : nullptr);
      rows.clear();
      auto add = [&](const at::Tensor& kv_rows, int64_t n_rows, int64_t begin_row, int64_t end_row) {
        const float* base = kv_rows.data_ptr<float>() + kv * n_rows * 2 * D;
        for (int64_t i = begin_row; i < end_row; ++i) rows.push_back(base + i * 2 * D);
      };
      // Visit the kept runs in memory order (attention does not depend on the order): the reads then move
      // forward through the cluster-ordered rows, which the prefetchers follow better than rank order.
      std::sort(runs.begin(), runs.end());
      add(sink_kv, first, 0, first);  // sinks, kept clusters, observation window
      for (const auto& run : runs) add(clustered_kv, Nc, run.first, run.second);
      add(window_kv, W, 0, W);
      attend(qh, R, D, rows, static_cast<float>(scale), s, op + h * R * D, lp + h * R);
    }
  });
  return {out, lse, kept};
}

}  // namespace

TORCH_LIBRARY(squeeze_mobile, m) {
  m.def("context_decode(Tensor q, Tensor centroid_codes, Tensor centroid_scales, Tensor counts, Tensor order, Tensor start, "
        "Tensor sink_kv, Tensor clustered_kv, Tensor window_kv, int budget, float scale, "
        "bool return_positions=False) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(squeeze_mobile, CPU, m) { m.impl("context_decode", &context_decode); }
