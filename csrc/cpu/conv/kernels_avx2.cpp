// Direct sparse convolution kernels compiled for the avx2 ISA (selected at run time).
#define SM_NS avx2
#define SM_TARGET __attribute__((target("avx2,fma")))
#define SM_VBYTES 32
#define SM_ISA_LEVEL 1
#include "cpu/conv/kernels_impl.inc"
