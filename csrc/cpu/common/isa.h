// The CPU kernels' instruction sets and the run-time choice among them, shared
// by every kernel family (spmm, conv). Nothing here includes torch, so the
// per-ISA translation units can include it.
#pragma once

namespace sparsemia::cpu {

// Ordered: a CPU that supports one level supports every lower one.
enum class Isa : int { Scalar = 0, Vec128 = 1, Avx2 = 2, Avx512 = 3 };

#if defined(__x86_64__) || defined(__i386__)
#define SPARSEMIA_X86 1
#else
#define SPARSEMIA_X86 0
#endif

// Widest ISA this CPU supports.
Isa best_isa();
// ISA the kernels use now: best_isa() unless lowered by set_isa() or the
// SPARSEMIA_CPU_ISA environment variable (scalar | vec128 | avx2 | avx512).
Isa active_isa();
// Force an ISA (for tests and benchmarks); asking for one the CPU lacks throws.
void set_isa(Isa isa);
const char* isa_name(Isa isa);
Isa isa_from_name(const char* name);

}  // namespace sparsemia::cpu
