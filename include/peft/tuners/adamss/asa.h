#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <peft/tuners/adamss/config.h>

namespace peft {

/// AdaMSS's Adaptive Subspace Allocation (Python PEFT's AdamssModel.update_and_allocate, which its
/// AdamssAsaCallback calls after every optimizer step) for one AdaMSS adapter injected with use_asa:
///
///     peft::AdamssAsa asa(*model);
///     for (int64_t step = 0; step < total_step; ++step) {
///       criterion(model->forward(x), y).backward();
///       optimizer.step();
///       asa.update_and_allocate(step);  // after backward(), before zero_grad()
///       optimizer.zero_grad();
///     }
///
/// From init_warmup to final_warmup (both included) each step folds |p * grad| of every subspace's A_i and B_i
/// into exponential averages of importance and uncertainty; every mask_interval steps the subspaces are ranked
/// over all layers by mean(importance * uncertainty) of A_i plus that of B_i, only the best schedule(step) stay
/// trainable (the others get requires_grad false and lose their gradients), and the averages start anew.
/// Subspaces whose tensors had no gradient are not ranked and keep their state.
class PEFT_API AdamssAsa {
 public:
  explicit AdamssAsa(torch::nn::Module& model, std::string adapter_name = "default");

  void update_and_allocate(int64_t global_step);

  /// Python's _schedule_threshold: the subspaces kept at `step` (std::nullopt before init_warmup):
  /// int(target + (total - target) * (1 - progress)^exponent) up to final_warmup, then the target.
  std::optional<int64_t> schedule(int64_t step) const;
  /// All subspaces of the adapter over the model's layers.
  int64_t total_subspaces() const { return total_; }

 private:
  struct Averages {
    at::Tensor ipt_a, unc_a, ipt_b, unc_b;  // undefined until a gradient was seen (Python's None)
  };
  void update_importance();
  void mask_to(int64_t target);

  torch::nn::Module& model_;
  std::string adapter_;
  AdamssConfig config_;
  int64_t total_ = 0;
  std::map<std::string, std::vector<Averages>> averages_;  // by layer name, one per subspace
};

}  // namespace peft
