// Depth-wise convolution (groups == Cin == Cout, one kh x kw filter per channel)
// with the bias and a clamp fused: sparsemia::depthwise_conv2d.
//
// A depth-wise layer does 9 multiply-adds per output (3x3) and is bound by
// memory, not arithmetic; the general sparse convolution (conv_cpu.cpp) treats
// each channel as its own tiny group and pays its packing and blocking per
// plane. Here the planes of one channel in a chunk of nb images are handled
// together, in L1: their zero-padded, stride-phase-split copy
//     P[sh][sw][nb * Hq][Wq],
//     P[py][px][i * Hq + r][q] = x_padded[image i][r * sh + py][q * sw + px]
// makes every tap (ky, kx) read at one constant offset from the output
// position, so the chunk's output is one flat run of whole vectors (row pitch
// Wq; the Wq - Wo columns past each row and the Hq - Ho rows past each image
// are computed and dropped), however small the maps: at 4x4 one plane is two
// vectors, too short to pay for its call, while a chunk of the batch is
// dozens. nb is as many images as fit in kChunkBytes (32x32 maps: a few).
// Taps whose weight is zero (pruned) are skipped. The clamp (ReLU: [0, inf], ReLU6: [0, 6], none:
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
  int64_t Hq, Wq;  // rows and columns of one stride phase of one image's padded plane
  int64_t phase() const { return Hq * Wq; }
};

// Bytes of the packed planes of one chunk: a chunk of images stacks as many planes of one channel
// as fit in them (small maps: the whole batch; 32x32 maps: a few).
constexpr int64_t kChunkBytes = 16 * 1024;

// ClampIn: the input is clamped to [in_lo, in_hi] as it is packed (NaN kept), so the activation
// of the layer before costs no pass of its own (the padding stays zero: what the layer reads as
// padding is the clamped tensor's).
template <typename T, bool ClampIn>
void depthwise_forward(const T* x, const T* weight, const T* bias, const DwGeometry& g, T lo, T hi, T in_lo, T in_hi,
                       T* y) {
  const auto in = [in_lo, in_hi](T v) {
    if constexpr (ClampIn) {
      v = v < in_lo ? in_lo : v;
      v = v > in_hi ? in_hi : v;
    }
    return v;
  };
  const auto kt = kernels_for<T>(active_isa());
  const int64_t taps = g.kh * g.kw;
  const int64_t image_cells = g.sh * g.sw * g.phase();
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(g.B, kChunkBytes / int64_t(sizeof(T)) / image_cells));
  const int64_t chunks = (g.B + nb - 1) / nb;
  // One stride phase of a chunk: the phase's rows of its nb images, one after another.
  const int64_t phase_cells = nb * g.phase();
  // The kept taps of every channel: offsets into P (the same for every channel) and weights.
  std::vector<int32_t> offset(g.C * taps);
  std::vector<T> w(g.C * taps);
  std::vector<int64_t> count(g.C);
  // each tap's offset, the same for every channel (the divisions once per tap, not per channel and tap)
  std::vector<int32_t> tap_offset(taps);
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ry = ky * g.dh, rx = kx * g.dw;
      tap_offset[ky * g.kw + kx] =
          int32_t(((ry % g.sh) * g.sw + rx % g.sw) * phase_cells + (ry / g.sh) * g.Wq + rx / g.sw);
    }
  for (int64_t c = 0; c < g.C; ++c) {
    int64_t k = 0;
    for (int64_t t = 0; t < taps; ++t) {
      const T v = weight[c * taps + t];
      if (v == T(0)) continue;
      offset[c * taps + k] = tap_offset[t];
      w[c * taps + k] = v;
      ++k;
    }
    count[c] = k;
  }
  // Where input row ih of image 0 starts in P, and for each column phase px the first input
  // column iw it holds (padded column iw + pw = q * sw + px) and that column's q: computed once,
  // as the divisions cost more than copying a row of a small map.
  std::vector<int64_t> row_offset(g.H), first_iw(g.sw), first_q(g.sw), phase_columns(g.sw);
  for (int64_t ih = 0; ih < g.H; ++ih) {
    const int64_t r = ih + g.ph;
    row_offset[ih] = (r % g.sh) * g.sw * phase_cells + (r / g.sh) * g.Wq;
  }
  for (int64_t px = 0; px < g.sw; ++px) {
    first_iw[px] = ((px - g.pw) % g.sw + g.sw) % g.sw;
    first_q[px] = (first_iw[px] + g.pw) / g.sw;
    phase_columns[px] = first_iw[px] < g.W ? (g.W - first_iw[px] + g.sw - 1) / g.sw : 0;
  }
  int64_t kept = 0;
  for (int64_t c = 0; c < g.C; ++c) kept += count[c];
  // Whole vectors are read past the flat run and written past its end (kernels.h).
  const int64_t slack = g.Wq + 64;
  const int64_t work = (kept + g.C) * g.B * g.Ho * g.Wo;
  const int64_t items = g.C * chunks;  // (channel, chunk of images), channel fastest
  const auto body = [&](int64_t begin, int64_t end) {
    // Padding positions of P are zeroed once and never written: every chunk fills the same cells.
    std::vector<T> packed(g.sh * g.sw * phase_cells + slack, T(0));
    std::vector<T> out(nb * g.phase() + 64);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item % g.C, b0 = (item / g.C) * nb, n_img = std::min(nb, g.B - b0);
      for (int64_t i = 0; i < n_img; ++i) {
        const T* src = x + ((b0 + i) * g.C + c) * g.H * g.W;
        T* image = packed.data() + i * g.phase();
        for (int64_t ih = 0; ih < g.H; ++ih) {
          T* row = image + row_offset[ih];
          const T* s = src + ih * g.W;
          if (g.sw == 1) {
            T* d = row + g.pw;
            for (int64_t iw = 0; iw < g.W; ++iw) d[iw] = in(s[iw]);
            continue;
          }
          for (int64_t px = 0; px < g.sw; ++px) {
            T* dphase = row + px * phase_cells + first_q[px];
            const T* sp = s + first_iw[px];
            if (g.sw == 2) {  // a constant stride: the loop vectorises
              for (int64_t q = 0; q < phase_columns[px]; ++q) dphase[q] = in(sp[2 * q]);
            } else {
              for (int64_t q = 0; q < phase_columns[px]; ++q) dphase[q] = in(sp[q * g.sw]);
            }
          }
        }
      }
      // One flat run over the chunk: image i's output row oh is run row i * Hq + oh; the rows
      // Ho .. Hq - 1 of each image (which read the next image's rows) are computed and dropped.
      const int64_t len = ((n_img - 1) * g.Hq + g.Ho) * g.Wq;
      kt.taps_flat(packed.data(), offset.data() + c * taps, w.data() + c * taps, count[c], bias ? bias[c] : T(0),
                   lo, hi, len, out.data());
      for (int64_t i = 0; i < n_img; ++i) {
        T* dst = y + ((b0 + i) * g.C + c) * g.Ho * g.Wo;
        const T* o = out.data() + i * g.phase();
        if (g.Wq == g.Wo) {
          std::memcpy(dst, o, g.Ho * g.Wo * sizeof(T));
          continue;
        }
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const T* so = o + oh * g.Wq;
          T* d = dst + oh * g.Wo;
          for (int64_t ow = 0; ow < g.Wo; ++ow) d[ow] = so[ow];
        }
      }
    }
  };
  if (work >= kMinParallelWork && at::get_num_threads() > 1 && items > 1) {
    at::parallel_for(0, items, 1, body);
  } else {
    body(0, items);
  }
}

Tensor depthwise_impl(const char* op, const Tensor& x_in, const Tensor& weight_in,
                      const c10::optional<Tensor>& bias_in, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, double lo, double hi, bool clamp_in, double in_lo, double in_hi) {
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
  TORCH_CHECK(!(in_lo > in_hi), op, ": the input clamp's min (", in_lo, ") must not exceed its max (", in_hi, ")");
  DwGeometry g{x_in.size(0), x_in.size(1), x_in.size(2), x_in.size(3), weight_in.size(2), weight_in.size(3),
               stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], 0, 0, 0, 0};
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.H + 2 * g.ph >= g.dh * (g.kh - 1) + 1 && g.W + 2 * g.pw >= g.dw * (g.kw - 1) + 1, op,
              ": the padded input (", g.H + 2 * g.ph, "x", g.W + 2 * g.pw, ") is smaller than the dilated kernel");
  g.Hq = (g.H + 2 * g.ph + g.sh - 1) / g.sh;
  g.Wq = (g.W + 2 * g.pw + g.sw - 1) / g.sw;
  // a chunk stacks planes only up to kChunkBytes: one plane decides whether the offsets fit
  TORCH_CHECK(g.sh * g.sw * g.phase() + g.Wq < (int64_t(1) << 31), op,
              ": one padded plane is too large for 32-bit offsets");
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  Tensor y = at::empty({g.B, g.C, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv2d", [&] {
    using T = scalar_t;
    const T* b = bias.defined() ? bias.data_ptr<T>() : nullptr;
    if (clamp_in) {
      depthwise_forward<T, true>(x.data_ptr<T>(), weight.data_ptr<T>(), b, g, T(lo), T(hi), T(in_lo), T(in_hi),
                                 y.data_ptr<T>());
    } else {
      depthwise_forward<T, false>(x.data_ptr<T>(), weight.data_ptr<T>(), b, g, T(lo), T(hi), T(0), T(0),
                                  y.data_ptr<T>());
    }
  });
  return y;
}

Tensor depthwise_conv2d(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double lo,
                        double hi) {
  return depthwise_impl("depthwise_conv2d", x, weight, bias, stride, padding, dilation, lo, hi, false, 0.0, 0.0);
}

Tensor depthwise_conv2d_clamp_in(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 double in_lo, double in_hi, double lo, double hi) {
  return depthwise_impl("depthwise_conv2d_clamp_in", x, weight, bias, stride, padding, dilation, lo, hi, true, in_lo,
                        in_hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d);
  m.impl("depthwise_conv2d_clamp_in", &depthwise_conv2d_clamp_in);
}

}  // namespace sparsemia::cpu::conv
