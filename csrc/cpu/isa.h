// Run-time choice of the CPU instruction set the low-bit kernels use.
//
// The widest path the CPU supports runs by default; LLMLITE_CPU_ISA=avx512|avx2|scalar forces one
// (read on every call, so tests can cover every path in one process). Forcing a path the CPU lacks
// is an error, never a silent downgrade.
#pragma once

#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

namespace llmlite::cpu {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

// The widest path this CPU (and OS, via XGETBV in libgcc's feature detection) can run.
inline Isa hardware_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma"))
      return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
}

inline bool cpu_has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}

// The path the next call runs: hardware_isa(), or the one LLMLITE_CPU_ISA forces.
inline Isa active_isa() {
  const char* env = std::getenv("LLMLITE_CPU_ISA");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return hardware_isa();
  const std::string want(env);
  Isa isa;
  if (want == "avx512") isa = Isa::Avx512;
  else if (want == "avx2") isa = Isa::Avx2;
  else if (want == "scalar") isa = Isa::Scalar;
  else TORCH_CHECK_VALUE(false, "LLMLITE_CPU_ISA=", want, " is not supported; accepted: avx512, avx2, scalar, auto");
  TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(hardware_isa()), "LLMLITE_CPU_ISA=", want,
              " but this CPU supports at most ", isa_name(hardware_isa()));
  return isa;
}

}  // namespace llmlite::cpu
