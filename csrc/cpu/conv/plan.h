// Planning of the CPU sparse convolution: the geometry of a call, the packed
// layout of its input, the entries the kernels run over (single taps or column
// groups), their offsets in the packed input, the cache blocking, and the cache
// of plans that makes all of this O(1) per call for a weight seen before.
// Execution (packing, the kernels' threads, epilogues) is in conv_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace sparsemia::cpu::conv {

// The tuning knobs, read from the environment once (on first use, or again on
// reload_tuning()), for tuning on CPUs other than those the defaults were
// measured on:
//   SPARSEMIA_CONV_BT       images per chunk for narrow maps (default: the fewest
//                           that make an output row whole 16-lane vectors)
//   SPARSEMIA_CONV_COLUMNS  f: column groups whenever the geometry allows them and
//                           a share f of their taps is stored (above 1: never;
//                           default: complete columns of 5-high kernels or rows of
//                           at least 128 bytes)
//   SPARSEMIA_CONV_L1       bytes of input one block of input channels of a band
//                           may read (default 32 KiB, about the L1 data cache)
//   SPARSEMIA_CONV_ROWS     output rows per band (default 8)
//   SPARSEMIA_CONV_EXPAND   the expanded packed layout (Packed): 0 never, 1 for
//                           layers at least 15% dense with at least 64 stored taps
//                           per input channel and kernel column (default), 2 always
//   SPARSEMIA_CONV_SEGTAPS  least stored taps per output channel and block of
//                           input channels (fewer blocks when a row has fewer
//                           taps: each block reloads and stores the tile's partial
//                           sums; default 16)
struct Tuning {
  int64_t bt = 0;          // 0: chosen per layer
  double columns = -1;     // < 0: the default rule
  int64_t l1 = int64_t(32) << 10;
  int64_t rows = 8;
  int64_t expand = 1;
  int64_t segtaps = 16;
};

// The knobs in effect (a copy: a call plans with one consistent set).
Tuning tuning();
// Reads the environment again (tests, tuning sessions); plans made under
// other settings are not reused (the settings are part of a plan's key).
void reload_tuning();

struct Geometry {
  int64_t B, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int64_t Ho, Wo, Hq, Wq, cin_g, cout_g;
};

// Checks the convolution's arguments (one message per bad argument) and derives
// its geometry.
Geometry make_geometry(const at::Tensor& x, int64_t Cout, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const char* op);

// One image with rows of fewer than 8 outputs (deep layers at batch 1): the
// output plane is computed as one run over the packed row pitch Wq, output
// (oh, ow) at oh * Wq + ow, rounded up to whole 64-byte vectors (columns Wo ..
// Wq - 1 of each row are computed and dropped), so that tiles are whole vectors
// instead of a few lanes of each row (measured at batch 1, 90% sparse, 2
// threads: 4x4 and 2x2 maps 1.05-1.2x faster; 8x8 maps slower, so not them). A
// 1x1 stride-1 unpadded conv is one long row already.
bool flat_plane(const Geometry& g, int64_t bt);

// The unpadded stride-1 case with Bt = 1 reads the NCHW image in place (not
// as a flat plane, which reads past the last row).
bool reads_in_place(const Geometry& g, int64_t bt, bool flat);

// Strides of the packed buffer X'[Cin][sh][sw][Hq][Wq][bt], or, expanded
// (forward calls that are neither a flat plane nor a 1x1 conv read in place),
// X'[Cin][kw][sh][Hq][P] with P = Wo * bt rounded up to whole 64-byte vectors:
// copy kx holds at (j, b) the padded input column j * sw + kx * dw of image b,
// so every tap of every output row reads one run that starts at a 64-byte
// boundary. The kernels' loads then never straddle two cache lines (unaligned
// vector loads at the kx = 1, 2 shifts of a plain row split; on AVX-512 a split
// load costs two L1 accesses, which bounded the single-tap kernel at about one
// multiply-add vector per cycle).
struct Packed {
  int64_t bt, phase, plane, size;  // elements per phase, per channel, per chunk
  int64_t x_row, len;              // kernel row step and row length
  int64_t out_rows;                // output rows the kernel sees (1 when a 1x1 conv is one long row)
  bool flat;                       // the output plane as one run (flat_plane)
  int64_t stage;                   // flat: elements per output channel in the staging buffer
  int64_t copy = 0;                // expanded: elements between the kx copies of a channel (0: not expanded)
};

// The entries the kernels run over, per output channel: single stored taps
// (the CSR pattern itself), or column groups (ConvArgs::kgroup): every
// (input channel, kx) column of a row with any stored tap becomes one entry of
// kh taps, zero where pruned.
struct Entries {
  std::vector<int64_t> crow;    // [Cout + 1]
  int64_t kgroup = 0;
  std::vector<int64_t> column;  // groups only: kernel column ci * kh * kw + kx of each group's ky = 0 tap
};

// Images are processed in chunks of bt; the last chunk holds the rest.
struct Chunks {
  int64_t bt, count, last_bt;
  int64_t size(int64_t c) const { return c == count - 1 ? last_bt : bt; }
};

Chunks chunks_of(const Geometry& g, const Tuning& tuning);

// Cache blocking of one packed layout (see ConvArgs): band shape, and the tap
// range of every output channel in each block of input channels.
struct Blocking {
  int64_t band_rows = 1, band_len = 0, nseg = 1;
  std::vector<int64_t> seg;  // empty when nseg == 1
};

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

// Counts an optimizer step (fused optimizers write parameters without bumping
// version counters): cached plans holding weight values built before it are not
// reused.
void note_optimizer_step();

// The plan of a call, from the cache or built (and cached) now; `values` only
// read when `forward` (column groups). Inference tensors have no version
// counter, so their plans are built every call.
template <typename T>
std::shared_ptr<const Plan<T>> plan_for(const Chunks& ch, const at::Tensor& crow, const at::Tensor& col,
                                        const at::Tensor& values, bool forward, const Geometry& g, const Tuning& tuning,
                                        const char* op);

extern template std::shared_ptr<const Plan<float>> plan_for<float>(const Chunks&, const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, bool, const Geometry&,
                                                                   const Tuning&, const char*);
extern template std::shared_ptr<const Plan<double>> plan_for<double>(const Chunks&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&, bool,
                                                                     const Geometry&, const Tuning&, const char*);

}  // namespace sparsemia::cpu::conv
