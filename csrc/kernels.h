// Plain C++ launcher interface of the CUDA kernels: raw pointers, element strides, an opaque stream.
// No torch or CUDA header here, so the .cu files compile with nvcc alone (csrc/check_nvcc.sh) and the
// torch-facing binding (bindings.cpp) stays the only file that needs libtorch.
#pragma once
#include <cstddef>
#include <cstdint>

namespace args_fast {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

// A (rows, cols) matrix of floats of any supported dtype, element strides.
struct FloatMatrix {
  const void* data;
  DType dtype;
  int64_t s0, s1;
};

struct SelectCommitArgs {
  FloatMatrix logits, rewards, uniforms;  // (B, k); uniforms.data == nullptr: greedy
  const int64_t* top_ids; int64_t ids_s0, ids_s1;
  const int64_t* eos_ids; int64_t n_eos, eos_s0;  // n_eos == 0: never stop
  bool* finished; int64_t finished_s0;             // (B,), updated in place
  int64_t* prefix_end; int64_t prefix_s0;          // (B,), += 1 in place
  int64_t* choice; int64_t* token; float* reward;  // (B,) contiguous outputs
  int64_t batch, k, pad_id;
  float w, temperature;
};

// One cache tensor (layers, B, H_kv, S, D), last dim contiguous, any element size.
struct CacheView {
  void* data;
  int64_t shape[5];
  int64_t stride[5];  // in elements
  int elem_size;      // bytes
};

// Returns nullptr on success, else the CUDA error string of the launch.
const char* launch_select_commit(const SelectCommitArgs& a, const CacheView& k_cache, const CacheView& v_cache,
                                 void* stream);

constexpr int kTopkMaxK = 64;
// Bytes of scratch launch_topk needs (device memory, no initialisation required).
size_t topk_workspace_bytes(int64_t batch, int64_t vocab, int k);
// logits (B, V) with row stride `row_stride` elements and unit column stride; values (B, k) float32,
// indices (B, k) int64, both contiguous. Sorted descending, ties by lower index, NaN above +inf.
const char* launch_topk(const void* logits, DType dtype, int64_t batch, int64_t vocab, int64_t row_stride, int k,
                        float* values, int64_t* indices, void* workspace, void* stream);

}  // namespace args_fast
