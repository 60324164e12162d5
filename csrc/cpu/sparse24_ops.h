// CPU implementations of the llmlite 2:4 sparse ops (schemas in llmlite_kernels/ops/schemas.py,
// format in llmlite_kernels/formats/sparse24.py).
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

namespace llmlite::cpu {

// llmlite::sparse24_linear: out = x @ decompress(values, meta).T + bias, fp32 accumulation, out in x.dtype.
at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias);

// llmlite::sparse24_lowbit_linear: the kept values in the low-bit format (dequantized on the fly).
at::Tensor sparse24_lowbit_linear_cpu(const at::Tensor& x, const at::Tensor& weight_packed,
                                      const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& weight_zero_point, const at::Tensor& meta,
                                      const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size);

}  // namespace llmlite::cpu
