// Direct sparse convolution kernels compiled for the avx2 ISA (selected at run time).
// x86 only: elsewhere the ISA is never selected and nothing is compiled here.
#include "cpu/common/isa.h"  // SPARSEMIA_X86
#if SPARSEMIA_X86
#define SM_NS avx2
#define SM_TARGET __attribute__((target("avx2,fma")))
#define SM_VBYTES 32
#define SM_ISA_LEVEL 1
#include "cpu/conv/kernels_impl.inc"
#endif
