// CPU implementations of the sparse convolution operators: execution of a plan
// (plan.h) -- input packing, the work split across torch's intra-op threads,
// the call into the direct-convolution kernels of the active ISA
// (kernels_*.cpp), the output epilogues -- the weight gradient, and the ops'
// registration.
//
// Layout choice. Images are processed in chunks of Bt. With wide output rows
// (Wo >= 16) or a single image, Bt = 1 and the packed buffer is just the
// zero-padded NCHW image (no copy at all for an unpadded stride-1 conv; a 1x1
// conv is then one long row per output channel, i.e. a sparse matmul over
// [Cin, H*W]). With narrow rows (deep layers: 8x8, 4x4, 2x2 maps) the batch is
// moved innermost so each output row is Wo * Bt long and fills whole vectors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/common/checks.h"
#include "cpu/common/parallel.h"
#include "cpu/conv/kernels.h"
#include "cpu/conv/plan.h"

namespace sparsemia::cpu::conv {
namespace {

using at::Tensor;

// Below this many multiply-adds a call runs on the calling thread. Measured with
// benchmarks/thread_crossover.py (2-core AVX2 EPYC, 3x3, batch 1): two threads are no faster
// than one up to about 1e6 multiply-adds on a quiet machine (0.7-1.2x) and 1.5x at 3.7e6; on
// a busy machine a parallel region can wait a scheduler time slice (several ms).
constexpr int64_t kMinParallelWork = int64_t(1) << 20;

// dst[i * bt + b] = src[b * img + i] for i < n, b < bt: a row of bt images, the image innermost.
// bt = 2, 4, 8 known at compile time, so that the loop vectorises.
template <typename T, int BT>
void interleave_images(const T* __restrict src, int64_t img, int64_t n, T* __restrict dst) {
  for (int64_t i = 0; i < n; ++i)
    for (int b = 0; b < BT; ++b) dst[i * BT + b] = src[b * img + i];
}
template <typename T>
void interleave_images(const T* src, int64_t img, int64_t n, int64_t bt, T* dst) {
  switch (bt) {
    case 2:
      return interleave_images<T, 2>(src, img, n, dst);
    case 4:
      return interleave_images<T, 4>(src, img, n, dst);
    case 8:
      return interleave_images<T, 8>(src, img, n, dst);
    default:
      for (int64_t i = 0; i < n; ++i)
        for (int64_t b = 0; b < bt; ++b) dst[i * bt + b] = src[b * img + i];
  }
}

// Copies images [b0, b0 + bt) of x (contiguous NCHW), channels [c0, c1), into
// X'. Positions X' keeps for padding are left as they are (zero).
template <typename T>
void pack_chunk(const T* x, const Geometry& g, const Packed& pk, int64_t b0, int64_t c0, int64_t c1, T* out) {
  const int64_t img = g.Cin * g.H * g.W, bt = pk.bt;
  if (pk.copy > 0) {
    // Expanded: copy kx, output column j holds input column iw = j * sw + kx * dw - pw,
    // for j in [j0, j1) (the others are padding).
    std::vector<T> rowt(bt > 1 ? g.W * bt : 0);
    for (int64_t ci = c0; ci < c1; ++ci)
      for (int64_t ih = 0; ih < g.H; ++ih) {
        const int64_t r = ih + g.ph;
        T* drow = out + ci * pk.plane + (r % g.sh) * pk.phase + (r / g.sh) * pk.x_row;
        const T* srow = x + b0 * img + (ci * g.H + ih) * g.W;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t shift = kx * g.dw - g.pw;  // iw = j * sw + shift
          const int64_t j0 = shift >= 0 ? 0 : (-shift + g.sw - 1) / g.sw;
          const int64_t j1 = std::min(g.Wo, g.W - shift > 0 ? (g.W - shift + g.sw - 1) / g.sw : int64_t(0));
          T* d = drow + kx * pk.copy;
          if (j0 >= j1) continue;
          if (bt == 1 && g.sw == 1) {
            std::memcpy(d + j0, srow + j0 + shift, (j1 - j0) * sizeof(T));
          } else if (bt == 1) {
            for (int64_t j = j0; j < j1; ++j) d[j] = srow[j * g.sw + shift];
          } else {
            if (kx == 0)  // the row with the batch innermost, once for every kx
              interleave_images<T>(srow, img, g.W, bt, rowt.data());
            if (g.sw == 1)
              std::memcpy(d + j0 * bt, rowt.data() + (j0 + shift) * bt, (j1 - j0) * bt * sizeof(T));
            else
              for (int64_t j = j0; j < j1; ++j)
                std::memcpy(d + j * bt, rowt.data() + (j * g.sw + shift) * bt, bt * sizeof(T));
          }
        }
      }
    return;
  }
  for (int64_t ci = c0; ci < c1; ++ci) {
    for (int64_t ih = 0; ih < g.H; ++ih) {
      const int64_t r = ih + g.ph;
      T* drow = out + ci * pk.plane + (r % g.sh) * g.sw * pk.phase + (r / g.sh) * g.Wq * bt;
      const T* srow = x + b0 * img + (ci * g.H + ih) * g.W;
      if (bt == 1 && g.sw == 1) {
        std::memcpy(drow + g.pw, srow, g.W * sizeof(T));
        continue;
      }
      if (g.sw == 1) {  // padded column iw + pw holds input column iw
        interleave_images<T>(srow, img, g.W, bt, drow + g.pw * bt);
        continue;
      }
      // Padded column c = px + sw * cq holds input column iw = c - pw; walk
      // each phase px with running indices (no division per element).
      for (int64_t px = 0; px < g.sw; ++px) {
        T* dphase = drow + px * pk.phase;
        int64_t cq = g.pw > px ? (g.pw - px + g.sw - 1) / g.sw : 0;
        for (int64_t iw = px + g.sw * cq - g.pw; iw < g.W; ++cq, iw += g.sw) {
          T* d = dphase + cq * bt;
          if (bt == 1) {
            *d = srow[iw];
          } else {
            for (int64_t bb = 0; bb < bt; ++bb) d[bb] = srow[bb * img + iw];
          }
        }
      }
    }
  }
}

template <typename T>
inline T relu_nan(T v) {
  return v > T(0) || v != v ? v : T(0);
}

// y[j] = relu(y[j] + res[j]) (NaN kept) or y[j] + res[j], j < n: one contiguous run.
template <typename T>
void add_residual(T* __restrict y, const T* __restrict res, int64_t n, bool relu) {
  if (relu) {
    for (int64_t j = 0; j < n; ++j) y[j] = relu_nan(y[j] + res[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] += res[j];
  }
}

// Y'[c1 - c0][Ho][Wo][bt] (channels [c0, c1), staged from c0) -> y[b0 + bb][co][oh][ow]; with a
// residual res (laid out as y), y = Y' + res, then the ReLU when `relu`.
// One channel's [hw][BT] staged outputs -> BT rows of hw, `img` apart. BT known at compile time:
// the loop over i vectorises (BT interleaved streams split by shuffles).
template <typename T, int BT>
void transpose_channel(const T* __restrict s, int64_t hw, int64_t img, T* __restrict d) {
  for (int64_t i = 0; i < hw; ++i)
    for (int bb = 0; bb < BT; ++bb) d[bb * img + i] = s[i * BT + bb];
}

template <typename T>
void unpack_chunk(const T* ytmp, const Geometry& g, int64_t b0, int64_t bt, int64_t c0, int64_t c1, const T* res,
                  bool relu, T* y) {
  const int64_t hw = g.Ho * g.Wo, img = g.Cout * hw;
  for (int64_t co = c0; co < c1; ++co) {
    const T* s = ytmp + (co - c0) * hw * bt;
    T* d = y + b0 * img + co * hw;
    switch (bt) {
      case 2:
        transpose_channel<T, 2>(s, hw, img, d);
        break;
      case 4:
        transpose_channel<T, 4>(s, hw, img, d);
        break;
      case 8:
        transpose_channel<T, 8>(s, hw, img, d);
        break;
      default:
        for (int64_t i = 0; i < hw; ++i)
          for (int64_t bb = 0; bb < bt; ++bb) d[bb * img + i] = s[i * bt + bb];
    }
  }
  // then the residual, image by image over the channels just written (still in cache): contiguous
  // runs (adding it in the transposing loop above cost 1.5x the whole convolution on 8x8 maps)
  if (res != nullptr)
    for (int64_t bb = 0; bb < bt; ++bb) {
      const int64_t at = (b0 + bb) * img + c0 * hw;
      add_residual(y + at, res + at, (c1 - c0) * hw, relu);
    }
}

// Flat planes (flat_plane) of channels [c0, c1), `chan` apart, rows Wq apart -> y[b0][co][oh][ow]
// (plus the residual res, then the ReLU, as unpack_chunk).
template <typename T>
void unpack_plane(const T* yt, int64_t chan, const Geometry& g, int64_t b0, int64_t c0, int64_t c1, const T* res,
                  bool relu, T* y) {
  const int64_t hw = g.Ho * g.Wo;
  for (int64_t co = c0; co < c1; ++co)
    for (int64_t oh = 0; oh < g.Ho; ++oh) {
      const int64_t at = (b0 * g.Cout + co) * hw + oh * g.Wo;
      const T* s = yt + (co - c0) * chan + oh * g.Wq;
      std::memcpy(y + at, s, g.Wo * sizeof(T));
    }
  if (res != nullptr) {
    const int64_t at = (b0 * g.Cout + c0) * hw;
    add_residual(y + at, res + at, (c1 - c0) * hw, relu);
  }
}

// The ReLU + max-pool epilogue (pool x pool windows, stride pool, floor mode).
// NaN propagates as in torch (max_pool2d and relu both keep it).
template <typename T>
inline T max_nan(T m, T v) {
  return (v > m || v != v) ? v : m;
}
// relu(max over each window) of channels [c0, c1) of one image, staged from c0 as [c1 - c0][Ho][ld]
// (windows other than 2x2, which the per-ISA relu_pool2 kernel takes),
// -> y[co][Ho / pool][Wo / pool]. The window's rows are combined first
// (contiguous runs), then neighbouring columns.
template <typename T>
void relu_pool_image(const T* src, int64_t plane, int64_t ld, const Geometry& g, int64_t pool, int64_t c0, int64_t c1,
                     T* y) {
  const int64_t hp = g.Ho / pool, wp = g.Wo / pool, hw = plane, n = wp * pool;
  std::vector<T> rowmax(n);
  T* rm = rowmax.data();
  for (int64_t co = c0; co < c1; ++co) {
    const T* s = src + (co - c0) * hw;
    T* d = y + co * hp * wp;
    for (int64_t i = 0; i < hp; ++i) {
      const T* s0 = s + i * pool * ld;
      std::memcpy(rm, s0, n * sizeof(T));
      for (int64_t r = 1; r < pool; ++r) {
        const T* sr = s0 + r * ld;
        for (int64_t j = 0; j < n; ++j) rm[j] = max_nan(rm[j], sr[j]);
      }
      T* drow = d + i * wp;
      for (int64_t j = 0; j < wp; ++j) {
        T m = rm[j * pool];
        for (int64_t c = 1; c < pool; ++c) m = max_nan(m, rm[j * pool + c]);
        drow[j] = relu_nan(m);
      }
    }
  }
}

// dy[b0 + bb][co][oh][ow] -> dY'[Cout][Ho][Wo][bt].
template <typename T>
void pack_grad_chunk(const T* dy, const Geometry& g, int64_t b0, int64_t bt, T* out) {
  const int64_t hw = g.Ho * g.Wo, img = g.Cout * hw;
  for (int64_t co = 0; co < g.Cout; ++co)
    for (int64_t i = 0; i < hw; ++i) {
      T* d = out + (co * hw + i) * bt;
      const T* s = dy + b0 * img + co * hw + i;
      for (int64_t bb = 0; bb < bt; ++bb) d[bb] = s[bb * img];
    }
}

template <typename T>
void conv_forward(const T* x, const Geometry& g, const Plan<T>& plan, const Chunks& ch, const T* values,
                  const T* bias, int64_t pool, bool relu, const T* residual, T* y) {
  // pool == 0: y is the convolution [B][Cout][Ho][Wo] plus `residual` (laid out
  // as y, or nullptr), then the ReLU when `relu`: applied by the kernels as they
  // store the final sums when they write y directly, else as a staged chunk is
  // unpacked. pool >= 2: y is the ReLU + max-pool epilogue
  // [B][Cout][Ho / pool][Wo / pool], computed from a chunk's output while it is
  // in cache.
  const auto kt = kernels_for<T>(active_isa());
  const Entries& e = plan.entries;
  const int64_t nnz = e.crow.back() * std::max<int64_t>(e.kgroup, 1);
  const int64_t work = (nnz + g.Cout) * g.Ho * g.Wo * g.B;
  if (e.kgroup > 0) values = plan.grouped.data();
  const bool threaded = work >= kMinParallelWork && at::get_num_threads() > 1;
  const int64_t threads = threaded ? at::get_num_threads() : 1;
  const int64_t hw = g.Ho * g.Wo;

  const auto args_for = [&](int64_t c, const T* xpacked, T* out, bool direct) {
    const int last = c == ch.count - 1 ? 1 : 0;
    const Packed& pk = plan.layout[last];
    const Blocking& bl = plan.blocking[last];
    ConvArgs<T> a{e.crow.data(), plan.offset[last].data(), values, xpacked, pk.x_row, pk.len, out, 0, 0, bias,
                  bl.seg.empty() ? nullptr : bl.seg.data(), bl.nseg, bl.band_rows, bl.band_len};
    a.kgroup = e.kgroup;
    a.relu = relu;
    if (direct) {  // bt == 1: write straight into NCHW
      a.y_co = hw;
      a.y_oh = pk.out_rows == 1 ? 0 : g.Wo;
    } else {
      a.y_co = hw * pk.bt;
      a.y_oh = g.Wo * pk.bt;
    }
    return a;
  };
  // A weight pruned away entirely reads no input: nothing to pack (the outputs are the epilogue of the bias).
  const bool in_place =
      e.crow.back() == 0 || (reads_in_place(g, ch.bt, plan.layout[0].flat) && plan.layout[0].copy == 0);
  const int64_t img_in = g.Cin * g.H * g.W, img_out = g.Cout * hw;
  const int64_t img_y = pool > 0 ? g.Cout * (g.Ho / pool) * (g.Wo / pool) : img_out;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // Output channels [c0, c1) of chunk c from packed input xp. When the output
  // needs unpacking or the epilogue, it is computed a block of channels at a time
  // into a staging buffer yt ([stage_block][Ho][Wo][bt], about 256 KiB) that is
  // still in L2 when it is read back.
  // One image at a time with the epilogue: staged rows are padded to whole
  // vectors (where that adds at most a quarter) so that every tile is full
  // width; the kernel then reads that far past a packed row (slack below).
  const int64_t vec = 64 / int64_t(sizeof(T));
  const int64_t padded = (g.Wo + vec - 1) / vec * vec;
  const int64_t stage_ld = ch.bt == 1 && pool > 0 && !in_place && 4 * (padded - g.Wo) <= g.Wo ? padded : g.Wo;
  // A flat plane (flat_plane) is staged at row pitch Wq, pk.stage per channel.
  const int64_t slack = stage_ld - g.Wo + vec;
  const auto stage_channel = [&](const Packed& pk) { return pk.flat ? pk.stage : g.Ho * stage_ld * pk.bt; };
  const auto stage_block = [&](const Packed& pk) {
    return std::max<int64_t>(1, (int64_t(256) << 10) / int64_t(sizeof(T) * stage_channel(pk)));
  };
  int64_t stage_size = 0;
  for (const Packed& pk : plan.layout) stage_size = std::max(stage_size, std::min(stage_block(pk), g.Cout) * stage_channel(pk));
  const auto staged = [&](const Packed& pk) { return pk.bt > 1 || pool > 0 || pk.flat; };
  const auto run_channels = [&](int64_t c, const T* xp, T* yt, int64_t c0, int64_t c1) {
    const int last = c == ch.count - 1 ? 1 : 0;
    const Packed& pk = plan.layout[last];
    const int64_t b0 = c * ch.bt;
    if (!staged(pk)) {
      auto a = args_for(c, xp, y + b0 * img_out, true);
      if (residual) a.res = residual + b0 * img_out;
      kt.rows(a, c0, c1, 0, pk.out_rows);
      return;
    }
    auto a = args_for(c, xp, yt, pk.bt == 1);
    if (residual) a.relu = false;  // after the residual, as the chunk is unpacked
    const int64_t chan = stage_channel(pk), block = stage_block(pk), ld = pk.flat ? g.Wq : stage_ld;
    if (pk.flat) {
      a.y_co = chan;
      a.y_oh = 0;
    } else if (pk.bt == 1 && stage_ld != g.Wo) {
      if (a.band_len == a.len) a.band_len = stage_ld;
      a.len = a.y_oh = stage_ld;
      a.y_co = chan;
    }
    for (int64_t s0 = c0; s0 < c1; s0 += block) {
      const int64_t s1 = std::min(c1, s0 + block);
      a.y_co0 = s0;
      kt.rows(a, s0, s1, 0, pk.out_rows);
      if (pool == 0) {
        if (pk.flat)
          unpack_plane<T>(yt, chan, g, b0, s0, s1, residual, relu, y);
        else
          unpack_chunk<T>(yt, g, b0, pk.bt, s0, s1, residual, relu, y);
      } else if (pk.bt > 1) {
        kt.relu_pool_batch(yt, s1 - s0, g.Ho, g.Wo, pk.bt, pool, y + b0 * img_y + s0 * (g.Ho / pool) * (g.Wo / pool),
                           img_y);
      } else if (pool == 2) {  // the common case, vectorised per ISA
        kt.relu_pool2(yt, s1 - s0, chan, g.Ho, ld, g.Wo / 2, y + b0 * img_y + s0 * (g.Ho / 2) * (g.Wo / 2));
      } else {
        relu_pool_image<T>(yt, chan, ld, g, pool, s0, s1, y + b0 * img_y);
      }
    }
  };

  if (!threaded || ch.count % threads == 0 || ch.count >= 4 * threads) {
    // Whole chunks per task: each thread packs its chunk into its own buffer
    // (cache-resident) and runs every output channel over it.
    run_tasks(ch.count, threaded, [&](int64_t begin, int64_t end) {
      Tensor buf, ytmp;
      int64_t buf_bt = -1;
      for (int64_t c = begin; c < end; ++c) {
        const int last = c == ch.count - 1 ? 1 : 0;
        const Packed& pk = plan.layout[last];
        const int64_t b0 = c * ch.bt;
        const T* xp = x + b0 * img_in;
        if (!in_place) {
          if (buf_bt != pk.bt) {
            buf = at::zeros({pk.size + slack}, opts);
            buf_bt = pk.bt;
          }
          pack_chunk<T>(x, g, pk, b0, 0, g.Cin, buf.data_ptr<T>());
          xp = buf.data_ptr<T>();
        }
        if (!ytmp.defined() && staged(pk)) ytmp = at::empty({stage_size}, opts);
        run_channels(c, xp, ytmp.defined() ? ytmp.data_ptr<T>() : nullptr, 0, g.Cout);
      }
    });
    return;
  }

  // Few chunks: pack them all, then split each chunk's output channels.
  const int64_t chunk_size = plan.layout[0].size;
  Tensor packed;
  if (!in_place) {
    packed = at::zeros({ch.count * chunk_size + slack}, opts);
    T* pp = packed.data_ptr<T>();
    at::parallel_for(0, ch.count * g.Cin, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c = t / g.Cin, ci = t % g.Cin;
        const Packed& pk = plan.layout[c == ch.count - 1 ? 1 : 0];
        pack_chunk<T>(x, g, pk, c * ch.bt, ci, ci + 1, pp + c * chunk_size);
      }
    });
  }
  const bool any_staged = staged(plan.layout[0]) || staged(plan.layout[1]);
  const int64_t parts = std::min<int64_t>(g.Cout, (4 * threads + ch.count - 1) / ch.count);
  const auto bounds = balanced_rows(e.crow.data(), g.Cout, parts, 4);
  run_tasks(ch.count * parts, threaded, [&](int64_t begin, int64_t end) {
    const Tensor ytmp = any_staged ? at::empty({stage_size}, opts) : Tensor();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c = t / parts, part = t % parts;
      const int64_t b0 = c * ch.bt, c0 = bounds[part], c1 = bounds[part + 1];
      const T* xp = in_place ? x + b0 * img_in : packed.data_ptr<T>() + c * chunk_size;
      run_channels(c, xp, any_staged ? ytmp.data_ptr<T>() : nullptr, c0, c1);
    }
  });
}

void check_inputs(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, const char* op) {
  check_pattern(crow, col, op);
  TORCH_CHECK(values.dim() == 1 && values.numel() == col.numel(), op,
              ": values must be 1-D with one entry per column index");
  TORCH_CHECK(crow.numel() >= 2, op, ": crow must have Cout + 1 >= 2 entries");
  check_values(values, x, op);
}

Tensor conv2d_impl(const Tensor& x_in, const Tensor& crow_in, const Tensor& col_in, const Tensor& values_in,
                   const c10::optional<Tensor>& bias_in, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t pool, bool relu,
                   const Tensor* residual_in, const char* op) {
  // pool >= 2: the ReLU + max-pool epilogue; else the ReLU when `relu`, after the residual if given.
  check_inputs(x_in, crow_in, col_in, values_in, op);
  const Geometry g = make_geometry(x_in, crow_in.numel() - 1, kernel_size, stride, padding, dilation, groups, op);
  check_bias(bias_in, values_in, g.Cout, op);
  if (pool > 0)
    TORCH_CHECK(g.Ho >= pool && g.Wo >= pool, op, ": the convolution's output (", g.Ho, "x", g.Wo,
                ") is smaller than the pooling window ", pool);
  if (residual_in) {
    const Tensor& r = *residual_in;
    TORCH_CHECK(r.dim() == 4 && r.size(0) == g.B && r.size(1) == g.Cout && r.size(2) == g.Ho && r.size(3) == g.Wo, op,
                ": residual must have the output's shape [", g.B, ", ", g.Cout, ", ", g.Ho, ", ", g.Wo, "], got ",
                r.sizes());
    TORCH_CHECK(r.scalar_type() == values_in.scalar_type(), op, ": residual must have the weight's dtype ",
                values_in.scalar_type(), ", got ", r.scalar_type());
    TORCH_CHECK(r.device().is_cpu(), op, ": residual must be a CPU tensor");
  }
  const Tensor x = x_in.contiguous(), crow = crow_in.contiguous(), col = col_in.contiguous();
  const Tensor values = values_in.contiguous();
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  const Tensor residual = residual_in ? residual_in->contiguous() : Tensor();
  Tensor y = pool > 0 ? at::empty({g.B, g.Cout, g.Ho / pool, g.Wo / pool}, x.options())
                      : at::empty({g.B, g.Cout, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  const Tuning knobs = tuning();
  const Chunks ch = chunks_of(g, knobs);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "csr_conv2d", [&] {
    using T = scalar_t;
    const auto plan = plan_for<T>(ch, crow, col, values, true, g, knobs, op);
    conv_forward<T>(x.data_ptr<T>(), g, *plan, ch, values.data_ptr<T>(),
                    bias.defined() ? bias.data_ptr<T>() : nullptr, pool > 1 ? pool : 0, relu && pool <= 1,
                    residual.defined() ? residual.data_ptr<T>() : nullptr, y.data_ptr<T>());
  });
  return y;
}

Tensor csr_conv2d(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                  const c10::optional<Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_impl(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, 0, false, nullptr,
                     "csr_conv2d");
}

Tensor csr_conv2d_relu_pool(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                            const c10::optional<Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t pool) {
  TORCH_CHECK(pool >= 1, "csr_conv2d_relu_pool: pool must be >= 1, got ", pool);
  return conv2d_impl(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, pool, true, nullptr,
                     "csr_conv2d_relu_pool");
}

Tensor csr_conv2d_add(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                      const c10::optional<Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const Tensor& residual,
                      bool relu) {
  return conv2d_impl(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, 0, relu, &residual,
                     "csr_conv2d_add");
}

Tensor csr_conv2d_weight_grad(const Tensor& x_in, const Tensor& grad_in, const Tensor& crow_in, const Tensor& col_in,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  const char* op = "csr_conv2d_weight_grad";
  TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type(), op, ": grad_out must have x's dtype");
  check_inputs(x_in, crow_in, col_in, grad_in.new_empty({col_in.numel()}), op);
  const Geometry g = make_geometry(x_in, crow_in.numel() - 1, kernel_size, stride, padding, dilation, groups, op);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == g.B && grad_in.size(1) == g.Cout && grad_in.size(2) == g.Ho &&
                  grad_in.size(3) == g.Wo,
              op, ": grad_out must have shape [", g.B, ", ", g.Cout, ", ", g.Ho, ", ", g.Wo, "], got ", grad_in.sizes());
  const Tensor x = x_in.contiguous(), dy = grad_in.contiguous(), crow = crow_in.contiguous(), col = col_in.contiguous();
  Tensor out = at::zeros({col.numel()}, x.options());
  if (col.numel() == 0 || g.B == 0 || g.Ho * g.Wo == 0) return out;
  const Tuning knobs = tuning();
  const Chunks ch = chunks_of(g, knobs);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_weight_grad", [&] {
    using T = scalar_t;
    // keyed on the pattern alone (col stands in for the values, which this op does not take)
    const auto plan_ptr = plan_for<T>(ch, crow, col, col, false, g, knobs, op);
    const Plan<T>& plan = *plan_ptr;
    const bool in_place = reads_in_place(g, ch.bt, false);
    const int64_t chunk_size = plan.layout[0].size, hw = g.Ho * g.Wo;
    const int64_t img_in = g.Cin * g.H * g.W, img_out = g.Cout * hw;
    Tensor packed, dpacked;
    if (!in_place) {
      packed = at::zeros({ch.count * chunk_size}, x.options());
      at::parallel_for(0, ch.count, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; ++c)
          pack_chunk<T>(x.data_ptr<T>(), g, plan.layout[c == ch.count - 1 ? 1 : 0], c * ch.bt, 0, g.Cin,
                        packed.data_ptr<T>() + c * chunk_size);
      });
    }
    if (ch.bt > 1) {
      dpacked = at::empty({ch.count * img_out * ch.bt}, x.options());
      at::parallel_for(0, ch.count, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; ++c)
          pack_grad_chunk<T>(dy.data_ptr<T>(), g, c * ch.bt, ch.size(c), dpacked.data_ptr<T>() + c * img_out * ch.bt);
      });
    }
    const auto kt = kernels_for<T>(active_isa());
    const int64_t work = col.numel() * hw * g.B;
    const bool threaded = work >= kMinParallelWork && at::get_num_threads() > 1;
    const int64_t parts = threaded ? std::min<int64_t>(g.Cout, 4 * at::get_num_threads()) : 1;
    const auto bounds = balanced_rows(plan.entries.crow.data(), g.Cout, parts, 1);
    run_tasks(parts, threaded, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        for (int64_t c = 0; c < ch.count; ++c) {
          const int last = c == ch.count - 1 ? 1 : 0;
          const Packed& pk = plan.layout[last];
          const T* xp = in_place ? x.data_ptr<T>() + c * ch.bt * img_in : packed.data_ptr<T>() + c * chunk_size;
          ConvGradArgs<T> a{plan.entries.crow.data(), plan.offset[last].data(), xp, pk.x_row, pk.len, pk.out_rows, nullptr,
                            0, 0, out.data_ptr<T>()};
          if (ch.bt == 1) {
            a.dy = dy.data_ptr<T>() + c * img_out;
            a.dy_co = hw;
            a.dy_oh = pk.out_rows == 1 ? 0 : g.Wo;
          } else {
            a.dy = dpacked.data_ptr<T>() + c * img_out * ch.bt;
            a.dy_co = hw * pk.bt;
            a.dy_oh = g.Wo * pk.bt;
          }
          kt.weight_grad(a, bounds[t], bounds[t + 1]);
        }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsemia, CPU, m) {
  m.impl("csr_conv2d", &csr_conv2d);
  m.impl("csr_conv2d_relu_pool", &csr_conv2d_relu_pool);
  m.impl("csr_conv2d_add", &csr_conv2d_add);
  m.impl("csr_conv2d_weight_grad", &csr_conv2d_weight_grad);
}

}  // namespace sparsemia::cpu::conv
