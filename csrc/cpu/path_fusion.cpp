// path_fusion on CPU: y = sum_p softmax(logits / T)_p * resample_p(x_p), and
// its backward, without materialising any resampled map.
//
// Work is split into units of (plane, band of output rows). A unit owns the
// output rows of its band and, for every input, the input rows that the same
// band covers (rows [floor(y0*h/H), floor(y1*h/H))): the forward writes its
// output rows, the backward writes dx for its input rows and one partial
// <x_p, resample_p^T(g)> per input. Both are gathers, so no two units write the
// same element; the per-unit partials are summed in unit order, so results do
// not depend on the number of threads.
//
// Bilinear weights follow PyTorch's upsample_bilinear2d (align_corners=False,
// size given): scale = in/out, src = max(scale*(d+0.5)-0.5, 0), computed in the
// input's own precision like ATen. The forward sums in the data's precision
// (as ATen and the reference do), the backward accumulates in double.
//
// Owns the CPU kernels of rspnet::path_fusion and path_fusion_backward; their
// input checks and the resampling rule are shared with CUDA (../common.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common.h"

namespace rspnet {
namespace {

// One axis of a bilinear resize: for every output index d its two taps and
// weights (exactly the forward's formula), and for every input index the
// contiguous range [lo, hi) of output indices whose taps include it.
struct Axis {
  std::vector<int64_t> i0, i1, lo, hi;
  std::vector<double> l0, l1;
  double coef(int64_t d, int64_t i) const {
    return (i0[d] == i ? l0[d] : 0.0) + (i1[d] == i ? l1[d] : 0.0);
  }
};

template <typename scalar_t>
Axis make_axis(int64_t in, int64_t out) {
  using real = scalar_t;  // ATen computes source indices in the data's precision
  Axis a;
  a.i0.resize(out), a.i1.resize(out), a.l0.resize(out), a.l1.resize(out);
  a.lo.assign(in, out), a.hi.assign(in, 0);
  const real scale = static_cast<real>(in) / static_cast<real>(out);
  for (int64_t d = 0; d < out; ++d) {
    real src = scale * (static_cast<real>(d) + static_cast<real>(0.5)) - static_cast<real>(0.5);
    if (src < 0) src = 0;
    const int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    const real l1 = src - static_cast<real>(i0);
    a.i0[d] = i0, a.i1[d] = i1;
    a.l1[d] = static_cast<double>(l1);
    a.l0[d] = static_cast<double>(static_cast<real>(1) - l1);
    for (int64_t i : {i0, i1}) {
      a.lo[i] = std::min(a.lo[i], d);
      a.hi[i] = std::max(a.hi[i], d + 1);
    }
  }
  return a;
}

template <typename scalar_t>
struct Path {
  Resample geo;
  const scalar_t* x;  // [NC, h, w], contiguous
  scalar_t* dx;       // same, or nullptr
  Axis rows, cols;    // kBilinear only
};

struct Plan {
  int64_t NC, H, W, band, bands;
  int64_t units() const { return NC * bands; }
  // Input rows of a path with h rows owned by band b: a partition of [0, h).
  int64_t first_row(int64_t b, int64_t h) const { return std::min(H, b * band) * h / H; }
};

Plan make_plan(int64_t NC, int64_t H, int64_t W) {
  // Bands of ~32k output elements: enough units for the threads, small
  // enough that a band of every input stays in cache.
  const int64_t band = std::max<int64_t>(1, std::min<int64_t>(H, (int64_t{1} << 15) / std::max<int64_t>(W, 1)));
  return {NC, H, W, band, (H + band - 1) / band};
}

std::vector<double> softmax_weights(const at::Tensor& logits, double temperature) {
  auto l = logits.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* lp = l.const_data_ptr<double>();
  const int64_t P = l.numel();
  std::vector<double> w(P);
  double m = -INFINITY, s = 0.0;
  for (int64_t p = 0; p < P; ++p) m = std::max(m, lp[p] / temperature);
  for (int64_t p = 0; p < P; ++p) s += (w[p] = std::exp(lp[p] / temperature - m));
  for (auto& v : w) v /= s;
  return w;
}

// ------------------------------------------------------------------ forward
// Sums are taken in the data's precision straight into the output row (as the
// plain-PyTorch reference and ATen's resampling do); the first path assigns,
// the others add. The bilinear column weights are kept in that precision too,
// so every inner loop but the column gather vectorises.
template <typename scalar_t>
void forward_impl(const std::vector<Path<scalar_t>>& paths, const std::vector<double>& w, const Plan& plan,
                  scalar_t* y) {
  const int64_t H = plan.H, W = plan.W;
  const size_t P = paths.size();
  std::vector<std::vector<scalar_t>> cw0(P), cw1(P);
  for (size_t p = 0; p < P; ++p) {
    if (paths[p].geo.mode == kBilinear) {
      cw0[p].assign(paths[p].cols.l0.begin(), paths[p].cols.l0.end());
      cw1[p].assign(paths[p].cols.l1.begin(), paths[p].cols.l1.end());
    }
  }
  at::parallel_for(0, plan.units(), 1, [&](int64_t u0, int64_t u1) {
    std::vector<scalar_t> pooled(W);
    // Horizontally resampled input rows, cached by row parity: an output row
    // needs input rows i and i+1 (different parities), and consecutive output
    // rows mostly need the same ones.
    std::vector<std::vector<scalar_t>> hrow(2 * P, std::vector<scalar_t>(W));
    std::vector<int64_t> cached(2 * P);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t plane = u / plan.bands, b = u % plan.bands;
      std::fill(cached.begin(), cached.end(), -1);
      for (int64_t yy = b * plan.band; yy < std::min(H, (b + 1) * plan.band); ++yy) {
        scalar_t* __restrict__ out = y + (plane * H + yy) * W;
        for (size_t p = 0; p < P; ++p) {
          const auto& pa = paths[p];
          const bool first = p == 0;
          const int64_t h = pa.geo.h, wi = pa.geo.w;
          const scalar_t* xp = pa.x + plane * h * wi;
          const scalar_t wp = static_cast<scalar_t>(w[p]);
          if (pa.geo.mode == kIdentity) {
            const scalar_t* __restrict__ row = xp + yy * W;
            if (first) {
              for (int64_t x = 0; x < W; ++x) out[x] = wp * row[x];
            } else {
              for (int64_t x = 0; x < W; ++x) out[x] += wp * row[x];
            }
          } else if (pa.geo.mode == kPool) {
            const int64_t kh = pa.geo.kh, kw = pa.geo.kw;
            scalar_t* __restrict__ acc = pooled.data();
            std::fill(pooled.begin(), pooled.end(), scalar_t(0));
            for (int64_t a = 0; a < kh; ++a) {
              const scalar_t* __restrict__ row = xp + (yy * kh + a) * wi;
              for (int64_t x = 0; x < W; ++x) {
                scalar_t s = 0;
                for (int64_t c = 0; c < kw; ++c) s += row[x * kw + c];
                acc[x] += s;
              }
            }
            const scalar_t scale = static_cast<scalar_t>(w[p] / static_cast<double>(kh * kw));
            if (first) {
              for (int64_t x = 0; x < W; ++x) out[x] = scale * acc[x];
            } else {
              for (int64_t x = 0; x < W; ++x) out[x] += scale * acc[x];
            }
          } else {
            const Axis& rows = pa.rows;
            const Axis& cols = pa.cols;
            const scalar_t* __restrict__ l0 = cw0[p].data();
            const scalar_t* __restrict__ l1 = cw1[p].data();
            const scalar_t* r[2];
            const int64_t taps[2] = {rows.i0[yy], rows.i1[yy]};
            for (int t = 0; t < 2; ++t) {
              const int64_t i = taps[t];
              const size_t slot = 2 * p + (i & 1);
              if (cached[slot] != i) {
                const scalar_t* src = xp + i * wi;
                scalar_t* __restrict__ dst = hrow[slot].data();
                const int64_t* c0 = cols.i0.data();
                const int64_t* c1 = cols.i1.data();
                for (int64_t x = 0; x < W; ++x) dst[x] = l0[x] * src[c0[x]] + l1[x] * src[c1[x]];
                cached[slot] = i;
              }
              r[t] = hrow[slot].data();
            }
            const scalar_t a0 = static_cast<scalar_t>(w[p] * rows.l0[yy]);
            const scalar_t a1 = static_cast<scalar_t>(w[p] * rows.l1[yy]);
            const scalar_t* __restrict__ r0 = r[0];
            const scalar_t* __restrict__ r1 = r[1];
            if (first) {
              for (int64_t x = 0; x < W; ++x) out[x] = a0 * r0[x] + a1 * r1[x];
            } else {
              for (int64_t x = 0; x < W; ++x) out[x] += a0 * r0[x] + a1 * r1[x];
            }
          }
        }
      }
    }
  });
}

// ----------------------------------------------------------------- backward
// For the input rows a unit owns, t = resample^T(g) one row at a time:
//   identity: t = g;  pool: t[i, j] = g[i/kh, j/kw] / (kh*kw);
//   bilinear: r[x] = sum over output rows y whose taps include i of A(y,i) g[y, x],
//             t[j] = sum over output columns x whose taps include j of B(x,j) r[x].
// Then dx = w_p t and partial += <x_p, t>.
template <typename scalar_t>
void backward_impl(const scalar_t* g, const std::vector<Path<scalar_t>>& paths, const std::vector<double>& w,
                   const Plan& plan, double* partial, bool logit_grad) {
  const int64_t H = plan.H, W = plan.W;
  const size_t P = paths.size();
  int64_t wmax = W;
  for (const auto& pa : paths) wmax = std::max(wmax, pa.geo.w);
  at::parallel_for(0, plan.units(), 1, [&](int64_t u0, int64_t u1) {
    std::vector<double> r(W), t(wmax);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t plane = u / plan.bands, b = u % plan.bands;
      const scalar_t* gp = g + plane * H * W;
      for (size_t p = 0; p < P; ++p) {
        const auto& pa = paths[p];
        const int64_t h = pa.geo.h, wi = pa.geo.w;
        const scalar_t* xp = pa.x + plane * h * wi;
        scalar_t* dxp = pa.dx ? pa.dx + plane * h * wi : nullptr;
        double dot = 0.0;
        for (int64_t i = plan.first_row(b, h); i < plan.first_row(b + 1, h); ++i) {
          if (pa.geo.mode == kIdentity) {
            const scalar_t* grow = gp + i * W;
            for (int64_t j = 0; j < wi; ++j) t[j] = static_cast<double>(grow[j]);
          } else if (pa.geo.mode == kPool) {
            const int64_t kh = pa.geo.kh, kw = pa.geo.kw;
            const scalar_t* grow = gp + (i / kh) * W;
            const double inv = 1.0 / static_cast<double>(kh * kw);
            for (int64_t j = 0; j < wi; ++j) t[j] = static_cast<double>(grow[j / kw]) * inv;
          } else {
            const Axis& rows = pa.rows;
            const Axis& cols = pa.cols;
            std::fill(r.begin(), r.end(), 0.0);
            for (int64_t yy = rows.lo[i]; yy < rows.hi[i]; ++yy) {
              const double a = rows.coef(yy, i);
              if (a == 0.0) continue;
              const scalar_t* grow = gp + yy * W;
              for (int64_t x = 0; x < W; ++x) r[x] += a * static_cast<double>(grow[x]);
            }
            for (int64_t j = 0; j < wi; ++j) {
              double s = 0.0;
              for (int64_t x = cols.lo[j]; x < cols.hi[j]; ++x) s += cols.coef(x, j) * r[x];
              t[j] = s;
            }
          }
          const scalar_t* xrow = xp + i * wi;
          if (dxp) {
            scalar_t* drow = dxp + i * wi;
            for (int64_t j = 0; j < wi; ++j) drow[j] = static_cast<scalar_t>(w[p] * t[j]);
          }
          if (logit_grad) {
            for (int64_t j = 0; j < wi; ++j) dot += static_cast<double>(xrow[j]) * t[j];
          }
        }
        partial[u * P + p] = dot;
      }
    }
  });
}

// ------------------------------------------------------------------ helpers
template <typename scalar_t>
std::vector<Path<scalar_t>> make_paths(const FusionInputs& c, std::vector<at::Tensor>* dxs) {
  std::vector<Path<scalar_t>> paths;
  for (size_t p = 0; p < c.xs.size(); ++p) {
    Path<scalar_t> pa{c.paths[p], c.xs[p].const_data_ptr<scalar_t>(),
                      dxs ? (*dxs)[p].mutable_data_ptr<scalar_t>() : nullptr, {}, {}};
    if (pa.geo.mode == kBilinear) {
      pa.rows = make_axis<scalar_t>(pa.geo.h, c.H);
      pa.cols = make_axis<scalar_t>(pa.geo.w, c.W);
    }
    paths.push_back(std::move(pa));
  }
  return paths;
}

at::Tensor path_fusion_cpu(const at::Tensor& logits, at::TensorList inputs, c10::SymIntArrayRef size,
                           double temperature) {
  const auto c = check_path_fusion(logits, inputs, size, temperature);
  auto y = at::empty({c.N, c.C, c.H, c.W}, c.xs[0].options());
  if (y.numel() == 0) return y;
  const auto w = softmax_weights(logits, temperature);
  const Plan plan = make_plan(c.N * c.C, c.H, c.W);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "path_fusion_cpu", [&] {
    forward_impl<scalar_t>(make_paths<scalar_t>(c, nullptr), w, plan, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> path_fusion_backward_cpu(const at::Tensor& grad,
                                                                          const at::Tensor& logits,
                                                                          at::TensorList inputs, double temperature,
                                                                          bool input_grads, bool logit_grad) {
  const auto c = check_path_fusion_backward(grad, logits, inputs, temperature);
  auto g = grad.to(c.xs[0].scalar_type()).contiguous();
  std::vector<at::Tensor> dxs;
  if (input_grads) {
    for (const auto& x : c.xs) dxs.push_back(at::empty_like(x));
  }
  const int64_t P = static_cast<int64_t>(c.xs.size());
  const Plan plan = make_plan(c.N * c.C, c.H, c.W);
  auto partial = at::zeros({std::max<int64_t>(plan.units(), 1), P}, g.options().dtype(at::kDouble));
  const auto w = softmax_weights(logits, temperature);
  if ((input_grads || logit_grad) && g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "path_fusion_backward_cpu", [&] {
      backward_impl<scalar_t>(g.const_data_ptr<scalar_t>(), make_paths<scalar_t>(c, input_grads ? &dxs : nullptr),
                              w, plan, partial.mutable_data_ptr<double>(), logit_grad);
    });
  } else if (input_grads) {
    for (auto& d : dxs) d.zero_();
  }
  // dL/dw_p summed over units in index order (deterministic), then through
  // the softmax: dlogits = w * (dw - <w, dw>) / T.
  std::vector<double> dw(P, 0.0);
  const double* pp = partial.const_data_ptr<double>();
  for (int64_t u = 0; u < plan.units(); ++u) {
    for (int64_t p = 0; p < P; ++p) dw[p] += pp[u * P + p];
  }
  double mean = 0.0;
  for (int64_t p = 0; p < P; ++p) mean += w[p] * dw[p];
  auto dl = at::empty({P}, partial.options());
  double* dlp = dl.mutable_data_ptr<double>();
  for (int64_t p = 0; p < P; ++p) dlp[p] = logit_grad ? w[p] * (dw[p] - mean) / temperature : 0.0;
  return {dxs, dl.to(logits.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rspnet, CPU, m) {
  m.impl("path_fusion", &path_fusion_cpu);
  m.impl("path_fusion_backward", &path_fusion_backward_cpu);
}

}  // namespace rspnet
