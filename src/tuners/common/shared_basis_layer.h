#pragma once

// The layer of methods whose adapters pair per-layer trained tensors with frozen random bases that one adapter
// shares between all its layers (VeRA, RandLoRA): containers <first>, <second>, then the shared BufferDicts
// <prefix>_A and <prefix>_B (Method::shares); the forward is CastInputLayer's. Also the plan of the shared bases: sized by the largest targeted layer, made once before any layer.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "tuners/common/cast_input_layer.h"

namespace peft::detail {

struct SharedBasisRecord : CastInputRecord {
  using CastInputRecord::CastInputRecord;
  double scaling = 1;
};

class SharedBasisLayer : public CastInputLayer {
 public:
  /// Container indices: the layer's two trained tensors, then the adapter's shared bases.
  enum Index : size_t { FIRST, SECOND, A, B };

  SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                   const std::string& first, const std::string& second, bool restore_result_dtype);

 protected:
  /// The layer's parts of VeRA-style bases A (rows x max_in) and B (max_out x cols): A[:, :in] and B[:out, :],
  /// converted to `options`.
  std::pair<at::Tensor, at::Tensor> slices(const std::string& adapter, const at::TensorOptions& options) const;
  /// diag(lambda_b) B[:out] diag(lambda_d) A[:len(lambda_d), :in], transposed for fan_in_fan_out: the update of
  /// VeRA-style methods (PVeRA passes the mean half of lambda_d). Computed in float32 for half-precision bases on
  /// the CPU and cast back, as Python does.
  at::Tensor scaled_basis_delta(const std::string& adapter, at::Tensor lambda_b, at::Tensor lambda_d) const;
};

/// The shared bases' sizes and tensor options for one injection of an adapter.
struct SharedBasisPlan {
  int64_t in_features = 0, out_features = 0;  // the largest among the targeted layers
  at::TensorOptions options;
  /// False: the bases are placeholders (on the meta device) that loading the checkpoint fills.
  bool materialise = true;
};

/// `save_projection`: whether checkpoints hold the bases (then low_cpu_mem_usage leaves them to the checkpoint).
SharedBasisPlan plan_shared_bases(const std::vector<LayerRequest>& requests, bool save_projection);

/// VeRA-style bases for `plan`: A (a_rows x in) then B (out x b_cols), each kaiming-uniform (gain sqrt(2), fan_in)
/// in float32 from one CPU generator seeded with `key`, A drawn first, as Python draws them (VeRA's
/// _kaiming_init, PVeRA's kaiming_uniform_); placeholders when the plan leaves them to the checkpoint.
std::pair<at::Tensor, at::Tensor> kaiming_bases(const SharedBasisPlan& plan, int64_t a_rows, int64_t b_cols,
                                                int64_t key);

/// VeRA-style trained vectors of one layer, lambda_b (out) and lambda_d (d_size), made as Python makes them:
/// lambda_b = ones, lambda_d = randn (float32, default CPU generator), then with init_weights lambda_b = 0 and
/// lambda_d = d_initial. Only allocated when `options` leave them to a checkpoint (meta device).
std::pair<at::Tensor, at::Tensor> scaling_vectors(const at::TensorOptions& options, int64_t out, int64_t d_size,
                                                  bool init_weights, double d_initial);

}  // namespace peft::detail
