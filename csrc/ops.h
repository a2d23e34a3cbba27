// Torch-facing declarations shared by the CPU implementations (cpu_ops.cpp) and the binding.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

namespace args_fast {

// Inputs are validated by the binding before these run (shapes, dtypes, devices, prefix_end range).
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_commit_cpu(
    const at::Tensor& top_logits, const at::Tensor& top_ids, const at::Tensor& rewards,
    const std::optional<at::Tensor>& uniforms, double w, double temperature, const at::Tensor& finished,
    const std::optional<at::Tensor>& eos_ids, int64_t pad_id, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& prefix_end);

std::tuple<at::Tensor, at::Tensor> topk_logits_cpu(const at::Tensor& logits, int64_t k);

// torch.argmax order: NaN beats everything, then the larger score, then the lower index.
inline bool argmax_better(float sa, int64_t ja, float sb, int64_t jb) {
  const bool na = sa != sa, nb = sb != sb;
  if (na || nb) return na && (!nb || ja < jb);
  return sa > sb || (sa == sb && ja < jb);
}

// Top-k key: order-preserving float bits << 32 | ~index (NaN above +inf, -0 == +0, ties -> lower index).
inline uint64_t topk_key(float x, int64_t i) {
  if (x == 0.f) x = 0.f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if (x != x) u = 0xffffffffu;
  else u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t(u) << 32) | uint32_t(~uint32_t(i));
}

}  // namespace args_fast
