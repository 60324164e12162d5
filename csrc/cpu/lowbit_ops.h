// CPU implementations of the llmlite low-bit ops (schemas in llmlite_kernels/ops/schemas.py).
#pragma once

#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

namespace llmlite::cpu {

// llmlite::lowbit_linear: out = x @ dequantize(W).T + bias, fp32 accumulation, out in x.dtype.
at::Tensor lowbit_linear_cpu(const at::Tensor& x, const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                             const std::optional<at::Tensor>& weight_zero_point,
                             const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size);

// llmlite::lowbit_linear_a8: lowbit_linear of x quantized to int8 per row and block of 128 (lowbit_a8.h).
at::Tensor lowbit_linear_a8_cpu(const at::Tensor& x, const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                                const std::optional<at::Tensor>& weight_zero_point,
                                const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size);

// llmlite::lowbit_linear_a8_interleaved: lowbit_linear_a8 with the weight in the row-interleaved layout
// (formats/cpu_interleave.py): AVX512-VNNI when the active ISA is avx512 and the CPU has VNNI, else portable C++.
at::Tensor lowbit_linear_a8_interleaved_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                            const at::Tensor& zero, const std::optional<at::Tensor>& bias,
                                            int64_t bits, int64_t group_size, int64_t out_features);

// llmlite::cpu_a8_path: "vnni" when lowbit_linear_a8 of this format runs on VNNI (batches <= 48 rows),
// else "fake-quant+<isa>".
std::string cpu_a8_path(int64_t bits, int64_t group_size, int64_t in_features);

// llmlite::lowbit_dequantize: W = (q - z) * s in fp32, returned as dtype [N, in_features].
at::Tensor lowbit_dequantize_cpu(const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                                 const std::optional<at::Tensor>& weight_zero_point, int64_t bits,
                                 int64_t group_size, int64_t in_features, at::ScalarType dtype);

// llmlite::cpu_isa: the ISA path the next call runs, and the CPU features behind it.
std::string cpu_isa();

}  // namespace llmlite::cpu
