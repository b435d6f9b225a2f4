// Raw-pointer direct sparse convolution kernels for the CPU, one instantiation
// per ISA (scalar, 128-bit vectors, AVX2, AVX-512; chosen at run time like the
// spmm kernels).
//
// The torch wrapper (conv_cpu.cpp) packs a chunk of Bt images into a zero-
// padded, stride-phase-split, batch-innermost buffer
//     X'[Cin][sh][sw][Hq][Wq][Bt]
// in which every stored weight (ci, ky, kx) reads its input at one constant
// element offset from the output position. Output row (co, oh) is then a
// contiguous run of len = Wo * Bt elements:
//     Y[co, oh, 0:len] = bias[co] + sum_p values[p] * X'[offset[p] + oh * x_row + 0:len]
// over the nonzeros p of row co. No im2col buffer is ever formed. Nothing here
// includes torch; threading lives in the wrapper.
#pragma once

#include <cstdint>

#include "cpu/common/isa.h"

namespace sparsemia::cpu::conv {

template <typename T>
struct ConvArgs {
  const int64_t* crow;    // [Cout + 1] into offset / values
  const int32_t* offset;  // [nnz] element offset of each stored tap in X'
  const T* values;        // [nnz]
  const T* x;             // packed input X' of one chunk
  int64_t x_row;          // elements of X' between the inputs of output rows oh and oh + 1
  int64_t len;            // elements per output row (Wo * Bt)
  T* y;                   // output: row (co, oh) starts at y + (co - y_co0) * y_co + oh * y_oh
  int64_t y_co, y_oh;
  const T* bias;  // [Cout] or nullptr
  // Cache blocking. Output rows are computed in bands of `band_rows` rows and
  // `band_len` elements; within a band the stored taps of each output channel
  // run in `nseg` segments, one per block of input channels:
  //     seg[co * (nseg + 1) + s] .. seg[co * (nseg + 1) + s + 1]
  // (nullptr with nseg = 1: the whole row crow[co] .. crow[co + 1]). The inputs
  // one block of one band reads fit in L1 and are reused by every output channel.
  const int64_t* seg;
  int64_t nseg;
  int64_t band_rows, band_len;
  int64_t y_co0 = 0;  // first output channel y holds (a staging buffer holds a block of them)
  // Column groups (stride and dilation 1 in height). kgroup = kh > 0: each stored
  // entry p is one (input channel, kx) column of kh taps, zero where pruned, with
  // values[p * kh + ky] and offset[p] the input of its ky = 0 tap; tap ky of
  // output row oh reads row oh + ky, i.e. offset[p] + (oh + ky) * x_row. A tile of
  // R output rows then loads each of its R + kh - 1 input rows once for R * kh
  // multiply-adds instead of once per multiply-add. 0: single taps.
  int64_t kgroup = 0;
  // ReLU on the final sums (NaN kept), applied where a tile is stored after its
  // last block of input channels.
  bool relu = false;
  // Residual added to the final sums (before the ReLU) as they are stored, or
  // nullptr: laid out as y, element (co, oh, n) at the same offset from res as
  // from y (the direct NCHW output only).
  const T* res = nullptr;
};

// Kernel heights the column-group kernels are compiled for.
constexpr bool column_groups_supported(int64_t kh) { return kh == 3 || kh == 5; }

// Gradient of the loss with respect to each stored weight (SDDMM-like):
//     out[p] += sum_oh dot(dy[co, oh, 0:len], X'[offset[p] + oh * x_row + 0:len])
template <typename T>
struct ConvGradArgs {
  const int64_t* crow;
  const int32_t* offset;
  const T* x;
  int64_t x_row;
  int64_t len;
  int64_t rows;  // Ho
  const T* dy;   // row (co, oh) at dy + co * dy_co + oh * dy_oh
  int64_t dy_co, dy_oh;
  T* out;  // [nnz], accumulated into
};

template <typename T>
struct ConvKernelTable {
  // Output channels [co_begin, co_end), output rows [oh_begin, oh_end).
  void (*rows)(const ConvArgs<T>&, int64_t co_begin, int64_t co_end, int64_t oh_begin, int64_t oh_end);
  // Weight gradient at the stored entries of output channels [co_begin, co_end).
  void (*weight_grad)(const ConvGradArgs<T>&, int64_t co_begin, int64_t co_end);
  // 2x2 max-pool + ReLU of `planes` planes [Ho][ld] (`plane` elements apart)
  // into [Ho / 2][wp] planes at dst (NaN kept). Reads whole vectors up to row
  // element ld - 1 (ld >= 2 * wp).
  void (*relu_pool2)(const T* src, int64_t planes, int64_t plane, int64_t Ho, int64_t ld, int64_t wp, T* dst);
  // pool x pool max-pool + ReLU of `planes` batch-innermost planes [Ho][Wo][bt]
  // into bt images: plane p's output (i, j) of image b goes to
  // dst[b * img + (p * (Ho / pool) + i) * (Wo / pool) + j] (NaN kept).
  void (*relu_pool_batch)(const T* src, int64_t planes, int64_t Ho, int64_t Wo, int64_t bt, int64_t pool, T* dst,
                          int64_t img);
  // Depth-wise convolution of one packed plane as one flat run (depthwise_cpu.cpp):
  //     out[n] = clamp(bias + sum_t w[t] * x[offset[t] + n], lo, hi)
  // for n in [0, len), NaN kept. Writes whole vectors up to n = len rounded up to the
  // ISA's vector length and reads that far past x[offset[t] + len - 1].
  void (*taps_flat)(const T* x, const int32_t* offset, const T* w, int64_t taps, T bias, T lo, T hi, int64_t len,
                    T* out);
};

namespace scalar {
template <typename T>
ConvKernelTable<T> table();
}
namespace vec128 {
template <typename T>
ConvKernelTable<T> table();
}
namespace avx2 {
template <typename T>
ConvKernelTable<T> table();
}
namespace avx512 {
template <typename T>
ConvKernelTable<T> table();
}

template <typename T>
ConvKernelTable<T> kernels_for(Isa isa) {
  switch (isa) {
#if SPARSEMIA_X86
    case Isa::Avx512:
      return avx512::table<T>();
    case Isa::Avx2:
      return avx2::table<T>();
#endif
    case Isa::Vec128:
      return vec128::table<T>();
    default:
      return scalar::table<T>();
  }
}

}  // namespace sparsemia::cpu::conv
