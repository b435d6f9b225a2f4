// Raw-pointer sparse matmul kernels for the CPU, one instantiation per ISA.
//
// Nothing here includes torch: the kernels are compiled once per ISA (scalar;
// 128-bit vectors, i.e. SSE2 on x86-64 and NEON on Arm; and on x86 AVX2 and
// AVX-512 with per-function target attributes), and only this plain
// interface crosses between the ISA-specific translation units and the torch
// wrappers in spmm_cpu.cpp. Threading lives in the wrappers.
#pragma once

#include <cstdint>

#include "cpu/common/isa.h"

namespace sparsemia::cpu {

// Y[M, N] (+)= W[M, K] (CSR) x X[K, N]; X has unit column stride.
template <typename T, typename I>
struct CsrArgs {
  const I* crow;
  const I* col;
  const T* values;
  const T* x;
  int64_t ldx;  // row stride of X
  T* y;
  int64_t y_rs, y_cs;  // Y element (i, n) lives at y[i * y_rs + n * y_cs]
  const T* bias;       // [M] added to every column, or nullptr
};

// Y[M, N] = W (BSR, blocks R x C, values [nblocks, R, C]) x X[K, N].
template <typename T, typename I>
struct BsrArgs {
  const I* crow;  // [M / R + 1]
  const I* col;   // block-column of each block
  const T* values;
  int64_t R, C;
  const T* x;
  int64_t ldx;
  T* y;
  int64_t y_rs, y_cs;
  const T* bias;
};

// out[e] = A[row(e), :] . B[col(e), :] over N, at the stored entries of a CSR
// pattern; for BSR, out[blk, r, c] = A[bi*R + r, :] . B[bj*C + c, :].
template <typename T, typename I>
struct SddmmArgs {
  const I* crow;
  const I* col;
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  T* out;
  int64_t N;
  int64_t R, C;  // block shape (1, 1 for CSR)
};

template <typename T, typename I>
struct KernelTable {
  // Rows [row_begin, row_end) and columns [n_begin, n_end) of Y.
  void (*csr_rows)(const CsrArgs<T, I>&, int64_t row_begin, int64_t row_end, int64_t n_begin, int64_t n_end);
  // Block rows [brow_begin, brow_end) and columns [n_begin, n_end) of Y.
  void (*bsr_rows)(const BsrArgs<T, I>&, int64_t brow_begin, int64_t brow_end, int64_t n_begin, int64_t n_end);
  void (*csr_sddmm)(const SddmmArgs<T, I>&, int64_t row_begin, int64_t row_end);
  void (*bsr_sddmm)(const SddmmArgs<T, I>&, int64_t brow_begin, int64_t brow_end);
};

namespace scalar {
template <typename T, typename I>
KernelTable<T, I> table();
}
namespace vec128 {
template <typename T, typename I>
KernelTable<T, I> table();
}
namespace avx2 {
template <typename T, typename I>
KernelTable<T, I> table();
}
namespace avx512 {
template <typename T, typename I>
KernelTable<T, I> table();
}

template <typename T, typename I>
KernelTable<T, I> kernels_for(Isa isa) {
  switch (isa) {
#if SPARSEMIA_X86
    case Isa::Avx512:
      return avx512::table<T, I>();
    case Isa::Avx2:
      return avx2::table<T, I>();
#endif
    case Isa::Vec128:
      return vec128::table<T, I>();
    default:
      return scalar::table<T, I>();
  }
}

}  // namespace sparsemia::cpu
