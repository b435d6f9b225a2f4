// CPU implementations of the sparse convolution operators: argument checks,
// input packing, the work split across torch's intra-op threads, and the call
// into the direct-convolution kernels of the active ISA (kernels_*.cpp).
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
#include <array>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/conv/kernels.h"

namespace sparsemia::cpu::conv {
namespace {

using at::Tensor;

struct Geometry {
  int64_t B, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int64_t Ho, Wo, Hq, Wq, cin_g, cout_g;
};

int64_t pair_at(at::IntArrayRef v, int64_t i, const char* what, const char* op) {
  TORCH_CHECK(v.size() == 2, op, ": ", what, " must have two elements, got ", v.size());
  return v[i];
}

Geometry make_geometry(const Tensor& x, int64_t Cout, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [B, Cin, H, W], got ", x.dim(), "-D");
  Geometry g{};
  g.B = x.size(0), g.Cin = x.size(1), g.H = x.size(2), g.W = x.size(3), g.Cout = Cout;
  g.kh = pair_at(kernel_size, 0, "kernel_size", op), g.kw = pair_at(kernel_size, 1, "kernel_size", op);
  g.sh = pair_at(stride, 0, "stride", op), g.sw = pair_at(stride, 1, "stride", op);
  g.ph = pair_at(padding, 0, "padding", op), g.pw = pair_at(padding, 1, "padding", op);
  g.dh = pair_at(dilation, 0, "dilation", op), g.dw = pair_at(dilation, 1, "dilation", op);
  g.groups = groups;
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1, op, ": kernel_size must be positive, got ", kernel_size);
  TORCH_CHECK(g.sh >= 1 && g.sw >= 1, op, ": stride must be positive, got ", stride);
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0, op, ": padding must be non-negative, got ", padding);
  TORCH_CHECK(g.dh >= 1 && g.dw >= 1, op, ": dilation must be positive, got ", dilation);
  TORCH_CHECK(groups >= 1 && g.Cin % groups == 0 && Cout % groups == 0, op, ": groups (", groups,
              ") must divide both Cin (", g.Cin, ") and Cout (", Cout, ")");
  g.cin_g = g.Cin / groups, g.cout_g = Cout / groups;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
  TORCH_CHECK(Hp >= eh && Wp >= ew, op, ": the padded input (", Hp, "x", Wp,
              ") is smaller than the dilated kernel (", eh, "x", ew, ")");
  g.Ho = (Hp - eh) / g.sh + 1, g.Wo = (Wp - ew) / g.sw + 1;
  g.Hq = (Hp + g.sh - 1) / g.sh, g.Wq = (Wp + g.sw - 1) / g.sw;
  return g;
}

// Images per chunk: 1 while an output row fills vectors on its own, else the
// batch goes innermost: the fewest images (a power of two, at most 16) that make
// an output row at least 32 elements and whole 16-lane vectors.
int64_t chunk_batch(const Geometry& g) {
  if (g.B == 1 || g.Wo >= 16) return 1;
  if (const char* env = std::getenv("SPARSEMIA_CONV_BT")) return std::max<int64_t>(1, std::min<int64_t>(g.B, std::atoi(env)));
  int64_t bt = 1;
  while (bt < 16 && (g.Wo * bt < 32 || (g.Wo * bt) % 16 != 0)) bt *= 2;
  return std::min(bt, g.B);
}

// One image with rows of fewer than 8 outputs (deep layers at batch 1): the
// output plane is computed as one run over the packed row pitch Wq, output
// (oh, ow) at oh * Wq + ow, rounded up to whole 64-byte vectors (columns Wo ..
// Wq - 1 of each row are computed and dropped), so that tiles are whole vectors
// instead of a few lanes of each row (measured at batch 1, 90% sparse, 2
// threads: 4x4 and 2x2 maps 1.05-1.2x faster; 8x8 maps slower, so not them). A
// 1x1 stride-1 unpadded conv is one long row already.
bool flat_plane(const Geometry& g, int64_t bt) {
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  return bt == 1 && g.Wo < 8 && g.Ho > 1 && !pointwise;
}

// The unpadded stride-1 case with Bt = 1 reads the NCHW image in place (not
// as a flat plane, which reads past the last row).
bool reads_in_place(const Geometry& g, int64_t bt, bool flat) {
  return bt == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && !flat;
}

// Strides of the packed buffer X'[Cin][sh][sw][Hq][Wq][bt].
struct Packed {
  int64_t bt, phase, plane, size;  // elements per phase, per channel, per chunk
  int64_t x_row, len;              // kernel row step and row length
  int64_t out_rows;                // output rows the kernel sees (1 when a 1x1 conv is one long row)
  bool flat;                       // the output plane as one run (flat_plane)
  int64_t stage;                   // flat: elements per output channel in the staging buffer
};

// `flat`: forward calls may take the flat-plane layout (the weight gradient reads rows).
Packed packed_layout(const Geometry& g, int64_t bt, int64_t elem_size, bool flat) {
  Packed p{};
  p.bt = bt;
  p.phase = g.Hq * g.Wq * bt;
  p.plane = g.sh * g.sw * p.phase;
  p.size = g.Cin * p.plane;
  p.x_row = g.Wq * bt;
  p.len = g.Wo * bt;
  p.out_rows = g.Ho;
  p.flat = flat && flat_plane(g, bt);
  if (p.flat) {
    const int64_t vec = 64 / elem_size;
    p.len = ((g.Ho - 1) * g.Wq + g.Wo + vec - 1) / vec * vec;
    p.stage = std::max(p.len, g.Ho * g.Wq);
    p.out_rows = 1;
    p.x_row = 0;
  } else if (reads_in_place(g, bt, false) && g.kh == 1 && g.kw == 1) {
    // Rows are contiguous in input and output alike: one row of H*W.
    p.len = g.Ho * g.Wo;
    p.out_rows = 1;
    p.x_row = 0;
  }
  return p;
}

// The entries the kernels run over, per output channel: single stored taps
// (the CSR pattern itself), or column groups (ConvArgs::kgroup): every
// (input channel, kx) column of a row with any stored tap becomes one entry of
// kh taps, zero where pruned.
struct Entries {
  std::vector<int64_t> crow;    // [Cout + 1]
  int64_t kgroup = 0;
  std::vector<int64_t> column;  // groups only: kernel column ci * kh * kw + kx of each group's ky = 0 tap
};

// Column groups are used for complete columns (every tap of every group stored,
// so the result is the single-tap sum in another order), for 5-high kernels or
// rows of at least 128 bytes. Measured on dense layers (AVX-512, 2 threads):
// 5x5, and 3x3 with 32-wide rows, 1.35-1.6x faster than single taps; 3x3 with
// 16-wide rows 7% slower; below ~0.8 filled single taps are ahead.
// SPARSEMIA_CONV_COLUMNS=f (read per call) takes groups whenever the geometry
// allows and at least a share f of their taps is stored (above 1: never); the
// zeros filled in then multiply their inputs, so a NaN or Inf input reaches
// outputs that a pruned tap would have kept it from. Returns the least fill
// (0: none).
double column_fill_wanted(const Geometry& g, int64_t row_len, int64_t elem_size) {
  if (g.sh != 1 || g.dh != 1 || !column_groups_supported(g.kh)) return 0;
  if (const char* env = std::getenv("SPARSEMIA_CONV_COLUMNS")) return std::atof(env) <= 1 ? std::max(std::atof(env), 1e-9) : 0;
  return g.kh >= 5 || row_len * elem_size >= 128 ? 1.0 : 0;
}

// Checks the CSR pattern and builds the entries; with `values`, column groups
// where the geometry allows them and the pattern fills them (their values go to
// `grouped`, [entries * kh]).
template <typename I, typename T>
void make_entries(Entries& e, std::vector<T>& grouped, const Tensor& crow, const Tensor& col, const T* values,
                  const Geometry& g, int64_t row_len, const char* op) {
  const int64_t M = g.Cout, kk = g.kh * g.kw, K = g.cin_g * kk;
  const I* rp = crow.data_ptr<I>();
  const I* cp = col.data_ptr<I>();
  const int64_t nnz = col.numel();
  TORCH_CHECK(int64_t(rp[0]) == 0 && int64_t(rp[M]) == nnz, op, ": crow must run from 0 to nnz = ", nnz, ", got ",
              int64_t(rp[0]), " .. ", int64_t(rp[M]));
  e.crow.resize(M + 1);
  for (int64_t co = 0; co < M; ++co) {
    e.crow[co] = rp[co];
    TORCH_CHECK(rp[co + 1] >= rp[co], op, ": crow must be non-decreasing");
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t c = cp[q];
      TORCH_CHECK(c >= 0 && c < K, op, ": column index ", c, " out of range [0, ", K, ")");
      // the input-channel blocks (make_blocking) take each row's entries in column order
      TORCH_CHECK(q == rp[co] || c >= int64_t(cp[q - 1]), op, ": col must be sorted within each row");
    }
  }
  e.crow[M] = nnz;
  e.kgroup = 0;
  e.column.clear();
  const double fill = values == nullptr || nnz == 0 ? 0 : column_fill_wanted(g, row_len, sizeof(T));
  if (fill <= 0) return;

  // The group (ci, kx) of each kernel column and its ky, looked up per tap.
  std::vector<int32_t> key(K), ky(K);
  for (int64_t c = 0; c < K; ++c) key[c] = int32_t((c / kk) * g.kw + c % g.kw), ky[c] = int32_t((c % kk) / g.kw);
  // Groups of a row are numbered in order of first appearance; taps come in
  // column order, so groups are ordered by input channel as the blocks need.
  std::vector<int64_t> stamp(g.cin_g * g.kw, -1), slot(g.cin_g * g.kw);
  int64_t groups = 0;
  for (int64_t co = 0; co < M; ++co) {
    int64_t row_groups = 0;
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t k = key[cp[q]];
      if (stamp[k] != co) stamp[k] = co, ++row_groups;
    }
    groups += row_groups;
    // complete columns only (the default): the first incomplete one decides
    if (fill >= 1 && (rp[co + 1] - rp[co]) != row_groups * g.kh) return;
  }
  if (double(nnz) < fill * double(groups * g.kh)) return;
  std::fill(stamp.begin(), stamp.end(), -1);
  e.kgroup = g.kh;
  e.column.resize(groups);
  grouped.assign(groups * g.kh, T(0));
  int64_t next = 0;
  for (int64_t co = 0; co < M; ++co) {
    e.crow[co] = next;
    for (int64_t q = rp[co]; q < rp[co + 1]; ++q) {
      const int64_t c = cp[q], k = key[c];
      if (stamp[k] != co) {
        stamp[k] = co, slot[k] = next;
        e.column[next++] = c - ky[c] * g.kw;
      }
      grouped[slot[k] * g.kh + ky[c]] += values[q];
    }
  }
  e.crow[M] = next;
}

// Offset in X' of each entry (of its ky = 0 tap for a group); `column` holds
// each entry's kernel column.
template <typename C>
void entry_offsets(const Entries& e, const C* column, const Geometry& g, const Packed& pk, std::vector<int32_t>& offset,
                   const char* op) {
  TORCH_CHECK(pk.size < std::numeric_limits<int32_t>::max(), op, ": the packed input chunk (", pk.size,
              " elements) is too large for 32-bit offsets");
  // Offsets of the K kernel columns within one group, computed once: the
  // per-entry loop below is then a lookup, with no division per entry.
  const int64_t kk = g.kh * g.kw, K = g.cin_g * kk;
  std::vector<int64_t> column_offset(K);
  for (int64_t c = 0; c < K; ++c) {
    const int64_t ci = c / kk, t = c % kk;
    const int64_t ry = (t / g.kw) * g.dh, rx = (t % g.kw) * g.dw;
    column_offset[c] = ci * pk.plane + ((ry % g.sh) * g.sw + rx % g.sw) * pk.phase + (ry / g.sh) * g.Wq * pk.bt +
                       (rx / g.sw) * pk.bt;
  }
  offset.resize(e.crow.back());
  for (int64_t co = 0; co < g.Cout; ++co) {
    const int64_t group_offset = (co / g.cout_g) * g.cin_g * pk.plane;
    for (int64_t q = e.crow[co]; q < e.crow[co + 1]; ++q) offset[q] = int32_t(group_offset + column_offset[column[q]]);
  }
}

// Copies images [b0, b0 + bt) of x (contiguous NCHW), channels [c0, c1), into
// X'. Positions X' keeps for padding are left as they are (zero).
template <typename T>
void pack_chunk(const T* x, const Geometry& g, const Packed& pk, int64_t b0, int64_t c0, int64_t c1, T* out) {
  const int64_t img = g.Cin * g.H * g.W, bt = pk.bt;
  for (int64_t ci = c0; ci < c1; ++ci) {
    for (int64_t ih = 0; ih < g.H; ++ih) {
      const int64_t r = ih + g.ph;
      T* drow = out + ci * pk.plane + (r % g.sh) * g.sw * pk.phase + (r / g.sh) * g.Wq * bt;
      const T* srow = x + b0 * img + (ci * g.H + ih) * g.W;
      if (bt == 1 && g.sw == 1) {
        std::memcpy(drow + g.pw, srow, g.W * sizeof(T));
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

// Y'[c1 - c0][Ho][Wo][bt] (channels [c0, c1), staged from c0) -> y[b0 + bb][co][oh][ow].
template <typename T>
void unpack_chunk(const T* ytmp, const Geometry& g, int64_t b0, int64_t bt, int64_t c0, int64_t c1, T* y) {
  const int64_t hw = g.Ho * g.Wo, img = g.Cout * hw;
  for (int64_t co = c0; co < c1; ++co)
    for (int64_t i = 0; i < hw; ++i) {
      const T* s = ytmp + ((co - c0) * hw + i) * bt;
      T* d = y + b0 * img + co * hw + i;
      for (int64_t bb = 0; bb < bt; ++bb) d[bb * img] = s[bb];
    }
}

// Flat planes (flat_plane) of channels [c0, c1), `chan` apart, rows Wq apart -> y[b0][co][oh][ow].
template <typename T>
void unpack_plane(const T* yt, int64_t chan, const Geometry& g, int64_t b0, int64_t c0, int64_t c1, T* y) {
  const int64_t hw = g.Ho * g.Wo;
  for (int64_t co = c0; co < c1; ++co)
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      std::memcpy(y + (b0 * g.Cout + co) * hw + oh * g.Wo, yt + (co - c0) * chan + oh * g.Wq, g.Wo * sizeof(T));
}

// The ReLU + max-pool epilogue (pool x pool windows, stride pool, floor mode).
// NaN propagates as in torch (max_pool2d and relu both keep it).
template <typename T>
inline T max_nan(T m, T v) {
  return (v > m || v != v) ? v : m;
}
template <typename T>
inline T relu_nan(T v) {
  return v > T(0) || v != v ? v : T(0);
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

// Output-channel boundaries splitting [0, M) into `parts` of about equal cost
// (stored entries plus a fixed per-channel overhead).
std::vector<int64_t> balanced_channels(const std::vector<int64_t>& crow, int64_t parts, int64_t row_cost) {
  const int64_t M = int64_t(crow.size()) - 1;
  std::vector<int64_t> bounds(parts + 1, M);
  bounds[0] = 0;
  const auto cost = [&](int64_t i) { return crow[i] + row_cost * i; };
  const int64_t total = cost(M);
  int64_t lo = 0;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t target = total * t / parts;
    int64_t l = lo, hi = M;
    while (l < hi) {
      const int64_t mid = l + (hi - l) / 2;
      if (cost(mid) < target) l = mid + 1; else hi = mid;
    }
    bounds[t] = lo = l;
  }
  return bounds;
}

template <typename F>
void run_tasks(int64_t tasks, bool threaded, const F& f) {
  if (!threaded || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) f(t, t + 1);
    return;
  }
  at::parallel_for(0, tasks, 1, f);
}

// Below this many multiply-adds a call runs on the calling thread.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

struct Chunks {
  int64_t bt, count, last_bt;
  int64_t size(int64_t c) const { return c == count - 1 ? last_bt : bt; }
};

Chunks chunks_of(const Geometry& g) {
  Chunks ch{};
  ch.bt = chunk_batch(g);
  ch.count = (g.B + ch.bt - 1) / ch.bt;
  ch.last_bt = g.B - (ch.count - 1) * ch.bt;
  return ch;
}

// Bytes of input one block of input channels of one band may read (about the
// L1 data cache: measured best among 8-64 KiB on a 32 KiB-L1 CPU), and output
// rows per band. SPARSEMIA_CONV_L1, SPARSEMIA_CONV_ROWS (and SPARSEMIA_CONV_BT,
// images per chunk for narrow maps) override them for tuning on other CPUs.
int64_t l1_budget() {
  static const int64_t budget = [] {
    const char* env = std::getenv("SPARSEMIA_CONV_L1");
    return env ? int64_t(std::atoll(env)) : int64_t(32) << 10;
  }();
  return budget;
}
int64_t band_rows_default() {
  static const int64_t rows = [] {
    const char* env = std::getenv("SPARSEMIA_CONV_ROWS");
    return env ? int64_t(std::atoll(env)) : int64_t(8);
  }();
  return rows;
}

// Cache blocking of one packed layout (see ConvArgs): band shape, and the tap
// range of every output channel in each block of input channels.
struct Blocking {
  int64_t band_rows = 1, band_len = 0, nseg = 1;
  std::vector<int64_t> seg;  // empty when nseg == 1
};

template <typename C>
void make_blocking(Blocking& b, const Entries& e, const C* column, const Geometry& g, const Packed& pk,
                   int64_t elem_size) {
  const int64_t vec = 64 / elem_size;  // elements per 64-byte vector
  b.band_len = pk.len <= 8 * vec ? pk.len : 4 * vec;
  b.band_rows = pk.out_rows == 1 ? 1 : band_rows_default();
  int64_t in_rows = 1, in_cols = pk.flat ? pk.plane : b.band_len;
  if (pk.out_rows != 1) {
    in_rows = (b.band_rows - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    const int64_t out_cols = (b.band_len + pk.bt - 1) / pk.bt;
    in_cols = ((out_cols - 1) * g.sw + (g.kw - 1) * g.dw + 1) * pk.bt;
  }
  const int64_t per_channel = std::max<int64_t>(in_rows * in_cols * elem_size, 1);
  const int64_t fit = std::max<int64_t>(l1_budget() / per_channel, 1);
  b.nseg = (g.cin_g + fit - 1) / fit;
  b.seg.clear();
  if (b.nseg <= 1) {
    b.nseg = 1;
    return;
  }
  const int64_t block = (g.cin_g + b.nseg - 1) / b.nseg;  // channels per block, evened out
  const int64_t cols = block * g.kh * g.kw;               // kernel columns per block
  const int64_t M = g.Cout;
  b.seg.resize(M * (b.nseg + 1));
  for (int64_t co = 0; co < M; ++co) {
    int64_t p = e.crow[co];
    const int64_t end = e.crow[co + 1];
    int64_t* sg = b.seg.data() + co * (b.nseg + 1);
    for (int64_t s = 0; s < b.nseg; ++s) {
      sg[s] = p;
      while (p < end && int64_t(column[p]) < (s + 1) * cols) ++p;
    }
    sg[b.nseg] = end;
  }
}

// Per-call plan: the entries (with their values when grouped), and the packed
// layout, entry offsets and blocking for the main and the last chunk size.
template <typename T>
struct Plan {
  Entries entries;
  std::vector<T> grouped;  // column-group values when entries.kgroup > 0
  Packed layout[2];
  std::vector<int32_t> offset[2];
  Blocking blocking[2];
};

// `values` nullptr: the weight gradient (single taps, rows as they are).
template <typename I, typename T>
void make_plan(Plan<T>& plan, const Chunks& ch, const Tensor& crow, const Tensor& col, const T* values,
               const Geometry& g, const char* op) {
  const bool forward = values != nullptr;
  // column groups step through output rows, which a flat plane does not have
  const bool flat = forward && flat_plane(g, ch.bt);
  make_entries<I, T>(plan.entries, plan.grouped, crow, col, flat ? nullptr : values, g, ch.bt * g.Wo, op);
  for (int last = 0; last < 2; ++last) {
    if (last == 1 && ch.last_bt == ch.bt) {
      plan.layout[1] = plan.layout[0];
      plan.offset[1] = plan.offset[0];
      plan.blocking[1] = plan.blocking[0];
      break;
    }
    plan.layout[last] = packed_layout(g, last ? ch.last_bt : ch.bt, sizeof(T), flat);
    if (plan.entries.kgroup > 0) {
      const int64_t* column = plan.entries.column.data();
      entry_offsets(plan.entries, column, g, plan.layout[last], plan.offset[last], op);
      make_blocking(plan.blocking[last], plan.entries, column, g, plan.layout[last], sizeof(T));
    } else {
      const I* column = col.data_ptr<I>();
      entry_offsets(plan.entries, column, g, plan.layout[last], plan.offset[last], op);
      make_blocking(plan.blocking[last], plan.entries, column, g, plan.layout[last], sizeof(T));
    }
  }
}

// Plans of recent calls, reused while the weight's index (and, for column
// groups, value) tensors are the same, unmodified objects (so also across the
// training steps of a weight whose values change): at batch 1 building
// a plan, O(nnz), costs more than a deep layer's convolution. Entries hold weak
// references, so a cached tensor's address cannot be taken by a new tensor
// while its entry lives, and its storage is freed as usual.
struct PlanKey {
  std::array<int64_t, 20> ints;  // geometry, chunking, dtypes
  std::string columns;           // SPARSEMIA_CONV_COLUMNS in effect
  std::array<const c10::TensorImpl*, 3> impl;
  std::array<int64_t, 3> version;
  bool operator==(const PlanKey& o) const {
    return ints == o.ints && columns == o.columns && impl == o.impl && version == o.version;
  }
};

class PlanCache {
 public:
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  static constexpr size_t kEntries = 32;

  std::shared_ptr<const void> find(const PlanKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (!(it->key == key) || !alive(*it)) continue;
      entries_.splice(entries_.begin(), entries_, it);  // most recently used first
      return entries_.front().plan;
    }
    return nullptr;
  }

  void insert(const PlanKey& key, const std::array<const Tensor*, 3>& tensors, std::shared_ptr<const void> plan) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_front(Entry{key,
                              {WeakImpl(tensors[0]->getIntrusivePtr()), WeakImpl(tensors[1]->getIntrusivePtr()),
                               WeakImpl(tensors[2]->getIntrusivePtr())},
                              std::move(plan)});
    if (entries_.size() > kEntries) entries_.pop_back();
  }

 private:
  struct Entry {
    PlanKey key;
    std::array<WeakImpl, 3> refs;
    std::shared_ptr<const void> plan;
  };
  static bool alive(const Entry& e) {
    for (size_t i = 0; i < 3; ++i)
      if (e.refs[i].expired()) return false;
    return true;
  }
  std::mutex mutex_;
  std::list<Entry> entries_;
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// The plan of a call, from the cache or built (and cached) now; `values` only
// read when `forward` (column groups). Inference tensors have no version
// counter, so their plans are built every call.
template <typename T>
std::shared_ptr<const Plan<T>> plan_for(const Chunks& ch, const Tensor& crow, const Tensor& col, const Tensor& values,
                                        bool forward, const Geometry& g, const char* op) {
  const auto build = [&] {
    auto plan = std::make_shared<Plan<T>>();
    const T* v = forward ? values.data_ptr<T>() : nullptr;
    if (crow.scalar_type() == at::kInt)
      make_plan<int32_t, T>(*plan, ch, crow, col, v, g, op);
    else
      make_plan<int64_t, T>(*plan, ch, crow, col, v, g, op);
    return plan;
  };
  if (crow.is_inference() || col.is_inference() || values.is_inference()) return build();
  // Whether a plan bakes the values in (column groups) depends on the pattern and
  // settings only: look for a pattern-only plan (col in the values slot), then
  // for one of these values.
  PlanKey key;
  key.ints = {g.B, g.Cin, g.H, g.W, g.Cout, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups, ch.bt,
              ch.last_bt, int64_t(c10::CppTypeToScalarType<T>::value), int64_t(crow.scalar_type()), forward ? 1 : 0,
              int64_t(sizeof(T))};
  const char* env = std::getenv("SPARSEMIA_CONV_COLUMNS");
  key.columns = env ? env : "";
  key.impl = {crow.unsafeGetTensorImpl(), col.unsafeGetTensorImpl(), col.unsafeGetTensorImpl()};
  key.version = {crow._version(), col._version(), col._version()};
  if (auto hit = plan_cache().find(key)) return std::static_pointer_cast<const Plan<T>>(hit);
  PlanKey with_values = key;
  with_values.impl[2] = values.unsafeGetTensorImpl();
  with_values.version[2] = values._version();
  if (forward)
    if (auto hit = plan_cache().find(with_values)) return std::static_pointer_cast<const Plan<T>>(hit);
  auto plan = build();
  if (plan->entries.kgroup == 0)
    plan_cache().insert(key, {&crow, &col, &col}, plan);
  else
    plan_cache().insert(with_values, {&crow, &col, &values}, plan);
  return plan;
}

template <typename T>
void conv_forward(const T* x, const Geometry& g, const Plan<T>& plan, const Chunks& ch, const T* values,
                  const T* bias, int64_t pool, T* y) {
  // pool == 0: y is the convolution [B][Cout][Ho][Wo]. pool >= 1: y is the
  // ReLU + max-pool epilogue [B][Cout][Ho / pool][Wo / pool], computed from a
  // chunk's output while it is in cache.
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
    if (direct) {  // bt == 1: write straight into NCHW
      a.y_co = hw;
      a.y_oh = pk.out_rows == 1 ? 0 : g.Wo;
    } else {
      a.y_co = hw * pk.bt;
      a.y_oh = g.Wo * pk.bt;
    }
    return a;
  };
  const bool in_place = reads_in_place(g, ch.bt, plan.layout[0].flat);
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
      kt.rows(args_for(c, xp, y + b0 * img_out, true), c0, c1, 0, pk.out_rows);
      return;
    }
    auto a = args_for(c, xp, yt, pk.bt == 1);
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
          unpack_plane<T>(yt, chan, g, b0, s0, s1, y);
        else
          unpack_chunk<T>(yt, g, b0, pk.bt, s0, s1, y);
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
  const auto bounds = balanced_channels(e.crow, parts, 4);
  run_tasks(ch.count * parts, threaded, [&](int64_t begin, int64_t end) {
    const Tensor ytmp = any_staged ? at::empty({stage_size}, opts) : Tensor();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c = t / parts, part = t % parts;
      const int64_t b0 = c * ch.bt, c0 = bounds[part], c1 = bounds[part + 1];
      const Packed& pk = plan.layout[c == ch.count - 1 ? 1 : 0];
      const T* xp = in_place ? x + b0 * img_in : packed.data_ptr<T>() + c * chunk_size;
      run_channels(c, xp, any_staged ? ytmp.data_ptr<T>() : nullptr, c0, c1);
    }
  });
}

void check_inputs(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, const char* op) {
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && values.dim() == 1, op, ": crow, col and values must be 1-D");
  TORCH_CHECK(crow.scalar_type() == col.scalar_type() && (crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong),
              op, ": crow and col must both be int32 or both int64, got ", crow.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK(crow.numel() >= 2, op, ": crow must have Cout + 1 >= 2 entries");
  TORCH_CHECK(values.numel() == col.numel(), op, ": values must have one entry per column index");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": the CPU kernels take float32 or float64 values, got ", values.scalar_type());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), op, ": x must have the weight's dtype ", values.scalar_type(),
              ", got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && crow.device().is_cpu() && col.device().is_cpu() && values.device().is_cpu(), op,
              ": all tensors must be on the CPU");
}

Tensor conv2d_impl(const Tensor& x_in, const Tensor& crow_in, const Tensor& col_in, const Tensor& values_in,
                   const c10::optional<Tensor>& bias_in, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t pool, const char* op) {
  check_inputs(x_in, crow_in, col_in, values_in, op);
  const Geometry g = make_geometry(x_in, crow_in.numel() - 1, kernel_size, stride, padding, dilation, groups, op);
  if (bias_in) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == g.Cout, op, ": bias must have shape [", g.Cout, "], got ",
                bias_in->sizes());
    TORCH_CHECK(bias_in->scalar_type() == values_in.scalar_type() && bias_in->device().is_cpu(), op,
                ": bias must be a CPU tensor of the weight's dtype");
  }
  if (pool > 0)
    TORCH_CHECK(g.Ho >= pool && g.Wo >= pool, op, ": the convolution's output (", g.Ho, "x", g.Wo,
                ") is smaller than the pooling window ", pool);
  const Tensor x = x_in.contiguous(), crow = crow_in.contiguous(), col = col_in.contiguous();
  const Tensor values = values_in.contiguous();
  const Tensor bias = bias_in ? bias_in->contiguous() : Tensor();
  Tensor y = pool > 0 ? at::empty({g.B, g.Cout, g.Ho / pool, g.Wo / pool}, x.options())
                      : at::empty({g.B, g.Cout, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  const Chunks ch = chunks_of(g);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "csr_conv2d", [&] {
    using T = scalar_t;
    const auto plan = plan_for<T>(ch, crow, col, values, true, g, op);
    conv_forward<T>(x.data_ptr<T>(), g, *plan, ch, values.data_ptr<T>(),
                    bias.defined() ? bias.data_ptr<T>() : nullptr, pool, y.data_ptr<T>());
  });
  return y;
}

Tensor csr_conv2d(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                  const c10::optional<Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_impl(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, 0, "csr_conv2d");
}

Tensor csr_conv2d_relu_pool(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values,
                            const c10::optional<Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t pool) {
  TORCH_CHECK(pool >= 1, "csr_conv2d_relu_pool: pool must be >= 1, got ", pool);
  return conv2d_impl(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, pool,
                     "csr_conv2d_relu_pool");
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
  const Chunks ch = chunks_of(g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_weight_grad", [&] {
    using T = scalar_t;
    // keyed on the pattern alone (col stands in for the values, which this op does not take)
    const auto plan_ptr = plan_for<T>(ch, crow, col, col, false, g, op);
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
    const auto bounds = balanced_channels(plan.entries.crow, parts, 1);
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
  m.impl("csr_conv2d_weight_grad", &csr_conv2d_weight_grad);
}

}  // namespace sparsemia::cpu::conv
