// Matrix-vector product for decode steps: y = x W^T for one token, split across the intra-op threads.
//
// A decode step streams every weight once (~540 MB fp32 for SmolLM2-135M) and is memory bound. MKL's
// sgemv behind F.linear runs single-threaded at these sizes (measured: the same GB/s at 1 and 2 threads),
// while two cores streaming at once reach ~1.5x the bandwidth of one on this project's hosts. Each thread
// here takes a range of outputs: for a row-major weight it reads those rows front to back, 8 at a time (8
// sequential streams, the input vector stays in L1); for a column-major one, its slice of every column-major
// row, accumulating in L1. Registered as torch.ops.squeeze_mobile.decode_gemv.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "simd.h"

namespace {

using namespace squeeze_simd;

// y[o] = w[o, :] . x for RB consecutive rows.
template <int RB>
inline void rows_dot(const float* w, int64_t n, const float* x, float* y) {
  v16f acc[RB] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const v16f xv = load16(x + i);
    for (int r = 0; r < RB; ++r) acc[r] += load16(w + r * n + i) * xv;
  }
  for (int r = 0; r < RB; ++r) {
    float s = hsum(acc[r]);
    for (int64_t j = i; j < n; ++j) s += w[r * n + j] * x[j];
    y[r] = s;
  }
}

// y[o] += x[i] * wt[i, o] for o in [0, n) over all i: the column-major (wt = W^T contiguous) product, one
// contiguous run of each row of wt per thread, accumulated in an L1-resident buffer.
void columns_axpy(const float* wt, int64_t in, int64_t stride, const float* x, int64_t n, float* acc) {
  std::fill(acc, acc + n, 0.f);
  for (int64_t i = 0; i < in; ++i) {
    const float xi = x[i];
    const float* row = wt + i * stride;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += xi * row[j];
  }
}

// x [T, in] (T rows, each multiplied separately), weight [out, in] either row-major or column-major
// (weight.t() contiguous: how the decoder stores its wide projections) -> [T, out].
at::Tensor decode_gemv(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "input: contiguous float32 [T, in]");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(1) == x.size(1),
              "weight: float32 [out, in]");
  const bool column_major = !weight.is_contiguous();
  TORCH_CHECK(!column_major || weight.t().is_contiguous(), "weight: row-major or column-major storage");
  const int64_t T = x.size(0), out_features = weight.size(0), n = weight.size(1);
  auto y = at::empty({T, out_features}, x.options());
  const float* w = weight.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  constexpr int64_t kRows = 8;
  const int64_t groups = (out_features + kRows - 1) / kRows;
  at::parallel_for(0, groups, 16, [&](int64_t begin, int64_t end) {
    const int64_t o_begin = begin * kRows, o_end = std::min(out_features, end * kRows);
    for (int64_t t = 0; t < T; ++t) {
      float* yr = yp + t * out_features;
      if (column_major) {
        columns_axpy(w + o_begin, n, out_features, xp + t * n, o_end - o_begin, yr + o_begin);
        continue;
      }
      for (int64_t o = o_begin; o < o_end; o += kRows) {
        const int64_t rows = std::min(kRows, o_end - o);
        if (rows == kRows) {
          rows_dot<8>(w + o * n, n, xp + t * n, yr + o);
        } else {
          for (int64_t r = 0; r < rows; ++r) rows_dot<1>(w + (o + r) * n, n, xp + t * n, yr + o + r);
        }
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(squeeze_mobile, m) { m.def("decode_gemv(Tensor x, Tensor weight) -> Tensor"); }

TORCH_LIBRARY_IMPL(squeeze_mobile, CPU, m) { m.impl("decode_gemv", &decode_gemv); }
