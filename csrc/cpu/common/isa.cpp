// Run-time choice of the CPU kernels' instruction set.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/common/isa.h"

namespace sparsemia::cpu {
namespace {

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
#if defined(__SSE2__) || defined(__ARM_NEON) || defined(__aarch64__)
  return Isa::Vec128;
#else
  return Isa::Scalar;
#endif
}

Isa initial() {
  const Isa best = detect();
  const char* env = std::getenv("SPARSEMIA_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const Isa wanted = isa_from_name(env);
  if (static_cast<int>(wanted) > static_cast<int>(best))
    throw std::invalid_argument(std::string("SPARSEMIA_CPU_ISA=") + env + ": this CPU supports at most " +
                                isa_name(best));
  return wanted;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect();
  return best;
}

Isa active_isa() { return static_cast<Isa>(current().load()); }

void set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa()))
    throw std::invalid_argument(std::string("isa: this CPU supports at most ") + isa_name(best_isa()) +
                                ", not " + isa_name(isa));
  current().store(static_cast<int>(isa));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    case Isa::Vec128:
      return "vec128";
    default:
      return "scalar";
  }
}

Isa isa_from_name(const char* name) {
  if (std::strcmp(name, "avx512") == 0) return Isa::Avx512;
  if (std::strcmp(name, "avx2") == 0) return Isa::Avx2;
  if (std::strcmp(name, "vec128") == 0) return Isa::Vec128;
  if (std::strcmp(name, "scalar") == 0) return Isa::Scalar;
  throw std::invalid_argument(std::string("isa: expected one of 'scalar', 'vec128', 'avx2', 'avx512', got '") + name +
                              "'");
}

}  // namespace sparsemia::cpu
