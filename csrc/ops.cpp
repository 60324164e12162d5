// Registers the CPU C++ kernels of the llmlite ops (schemas: llmlite_kernels/ops/schemas.py).
#include <Python.h>

#include <torch/library.h>

#include "cpu/lowbit_ops.h"
#include "cpu/sparse24_ops.h"

TORCH_LIBRARY_IMPL(llmlite, CPU, m) {
  m.impl("lowbit_linear", &llmlite::cpu::lowbit_linear_cpu);
  m.impl("lowbit_linear_a8", &llmlite::cpu::lowbit_linear_a8_cpu);
  m.impl("lowbit_linear_a8_interleaved", &llmlite::cpu::lowbit_linear_a8_interleaved_cpu);
  m.impl("lowbit_dequantize", &llmlite::cpu::lowbit_dequantize_cpu);
  m.impl("sparse24_linear", &llmlite::cpu::sparse24_linear_cpu);
  m.impl("sparse24_lowbit_linear", &llmlite::cpu::sparse24_lowbit_linear_cpu);
}

// No tensor arguments: registered for every backend.
TORCH_LIBRARY_IMPL(llmlite, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", &llmlite::cpu::cpu_isa);
  m.impl("cpu_a8_path", &llmlite::cpu::cpu_a8_path);
}

// Importing llmlite_kernels._C runs the registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
