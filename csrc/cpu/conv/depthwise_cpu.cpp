// Depth-wise convolution (groups == Cin == Cout, one kh x kw filter per channel)
// with the bias and a clamp fused: sparsemia::depthwise_conv2d.
//
// A depth-wise layer does 9 multiply-adds per output (3x3) and is bound by
// memory, not arithmetic; the general sparse convolution (conv_cpu.cpp) treats
// each channel as its own tiny group and pays its packing and blocking per
// plane. Here each (image, channel) plane is handled alone, in L1: its zero-
// padded, stride-phase-split copy
//     P[sh][sw][Hq][Wq],   P[py][px][r][q] = x_padded[r * sh + py][q * sw + px]
// makes every tap (ky, kx) read at one constant offset from the output
// position, so the whole output plane is one flat run of Ho * Wq elements
// (row pitch Wq; the Wq - Wo columns past each row are computed and dropped)
// of whole vectors, however narrow the rows (4x4 maps). Taps whose weight is
// zero (pruned) are skipped. The clamp (ReLU: [0, inf], ReLU6: [0, 6], none:
// [-inf, inf]) is applied before the plane is written, so the activation costs
// no extra pass over memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/common/checks.h"
#include "cpu/common/isa.h"
#include "cpu/conv/kernels.h"

namespace sparsemia::cpu::conv {
namespace {

using at::Tensor;

// Below this many multiply-adds a call runs on the calling thread.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

struct DwGeometry {
  int64_t B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Hq, Wq;  // rows and columns of one stride phase of the padded plane
  int64_t phase() const { return Hq * Wq; }
  int64_t packed() const { return sh * sw * phase(); }
};

template <typename T>
void depthwise_forward(const T* x, const T* weight, const T* bias, const DwGeometry& g, T lo, T hi, T* y) {
  const auto kt = kernels_for<T>(active_isa());
  const int64_t taps = g.kh * g.kw;
  // The kept taps of every channel: offsets into P (the same for every channel) and weights.
  std::vector<int32_t> offset(g.C * taps);
  std::vector<T> w(g.C * taps);
  std::vector<int64_t> count(g.C);
  for (int64_t c = 0; c < g.C; ++c) {
    int64_t k = 0;
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const T v = weight[(c * g.kh + ky) * g.kw + kx];
        if (v == T(0)) continue;
        const int64_t ry = ky * g.dh, rx = kx * g.dw;
        offset[c * taps + k] = int32_t((((ry % g.sh) * g.sw + rx % g.sw) * g.Hq + ry / g.sh) * g.Wq + rx / g.sw);
        w[c * taps + k] = v;
        ++k;
      }
    count[c] = k;
  }
  int64_t kept = 0;
  for (int64_t c = 0; c < g.C; ++c) kept += count[c];
  const int64_t len = g.Ho * g.Wq;
  // Whole vectors are read past the flat run and written past its end (kernels.h).
  const int64_t slack = g.Wq + 64;
  const int64_t work = (kept + g.C) * g.B * g.Ho * g.Wo;
  const int64_t planes = g.B * g.C;
  const auto body = [&](int64_t begin, int64_t end) {
    // Padding positions of P are zeroed once and never written: every plane fills the same cells.
    std::vector<T> packed(g.packed() + slack, T(0));
    std::vector<T> out(len + 64);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.C;
      const T* src = x + p * g.H * g.W;
      for (int64_t ih = 0; ih < g.H; ++ih) {
        const int64_t r = ih + g.ph;
        T* row = packed.data() + ((r % g.sh) * g.sw * g.Hq + r / g.sh) * g.Wq;
        const T* s = src + ih * g.W;
        if (g.sw == 1) {
          std::memcpy(row + g.pw, s, g.W * sizeof(T));
          continue;
        }
        // padded column iw + pw = q * sw + px: walk each phase px with a running q (no division per element)
        for (int64_t px = 0; px < g.sw; ++px) {
          const int64_t iw0 = ((px - g.pw) % g.sw + g.sw) % g.sw;
          T* dphase = row + px * g.phase();
          for (int64_t iw = iw0, q = (iw0 + g.pw) / g.sw; iw < g.W; iw += g.sw, ++q) dphase[q] = s[iw];
        }
      }
      const T b = bias ? bias[c] : T(0);
      T* dst = y + p * g.Ho * g.Wo;
      kt.taps_flat(packed.data(), offset.data() + c * taps, w.data() + c * taps, count[c], b, lo, hi, len,
                   out.data());
      if (g.Wq == g.Wo) {
        std::memcpy(dst, out.data(), g.Ho * g.Wo * sizeof(T));
      } else {
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          std::memcpy(dst + oh * g.Wo, out.data() + oh * g.Wq, g.Wo * sizeof(T));
      }
    }
  };
  if (work >= kMinParallelWork && at::get_num_threads() > 1 && planes > 1) {
    at::parallel_for(0, planes, 1, body);
  } else {
    body(0, planes);
  }
}

Tensor depthwise_conv2d(const Tensor& x_in, const Tensor& weight_in, const c10::optional<Tensor>& bias_in,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double lo,
                        double hi) {
  const char* op = "depthwise_conv2d";
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be 4-D [B, C, H, W], got ", x_in.dim(), "-D");
  TORCH_CHECK(weight_in.dim() == 4 && weight_in.size(1) == 1 && weight_in.size(0) == x_in.size(1), op,
              ": weight must have shape [C, 1, kh, kw] with C = x.shape[1] = ", x_in.size(1), ", got ",
              weight_in.sizes());
  check_values(weight_in, x_in, op);
  check_bias(bias_in, weight_in, x_in.size(1), op);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have two elements each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              op, ": stride and dilation must be positive and padding non-negative");
  TORCH_CHECK(!(lo > hi), op, ": the clamp's min (", lo, ") must not exceed its max (", hi, ")");
  DwGeometry g{x_in.size(0), x_in.size(1), x_in.size(2), x_in.size(3), weight_in.size(2), weight_in.size(3),
               stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], 0, 0, 0, 0};
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.H + 2 * g.ph >= g.dh * (g.kh - 1) + 1 && g.W + 2 * g.pw >= g.dw * (g.kw - 1) + 1, op,
              ": the padded input (", g.H + 2 * g.ph, "x", g.W + 2 * g.pw, ") is smaller than the dilated kernel");
  g.Hq = (g.H + 2 * g.ph + g.sh - 1) / g.sh;
  g.Wq = (g.W + 2 * g.pw + g.sw - 1) / g.sw;
  TORCH_CHECK(g.packed() + g.Wq < (int64_t(1) << 31), op, ": one padded plane is too large for 32-bit offsets");
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  Tensor y = at::empty({g.B, g.C, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv2d", [&] {
    using T = scalar_t;
    depthwise_forward<T>(x.data_ptr<T>(), weight.data_ptr<T>(), bias.defined() ? bias.data_ptr<T>() : nullptr, g,
                         T(lo), T(hi), y.data_ptr<T>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CPU, m) { m.impl("depthwise_conv2d", &depthwise_conv2d); }

}  // namespace sparsemia::cpu::conv
