// Direct sparse convolution kernels compiled without vector extensions.
#define SM_NS scalar
#define SM_TARGET
#define SM_VBYTES 0
#define SM_ISA_LEVEL 0
#include "cpu/conv/kernels_impl.inc"
