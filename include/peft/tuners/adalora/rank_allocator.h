#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <peft/tuners/adalora/config.h>

namespace peft {

/// AdaLoRA's training-time rank allocation (Python PEFT's RankAllocator and AdaLoraModel.update_and_allocate)
/// for one trainable AdaLoRA adapter of a model:
///
///     peft::AdaLoraRankAllocator allocator(*model);
///     for (int64_t step = 0; step < total_step; ++step) {
///       auto loss = criterion(model->forward(x), y) + allocator.orthogonal_regularization();
///       loss.backward();
///       optimizer.step();
///       allocator.update_and_allocate(step);  // after step(), before zero_grad()
///       optimizer.zero_grad();
///     }
///
/// Masked ranks are zeroed in lora_E (tensors keep their size, so optimizers stay valid); the pattern is
/// stored in the adapter's config, so get_peft_model_state_dict / save_adapter write only the kept ranks, as
/// Python PEFT does.
class PEFT_API AdaLoraRankAllocator {
 public:
  explicit AdaLoraRankAllocator(torch::nn::Module& model, std::string adapter_name = "default");

  /// Updates the importance scores from the current gradients and, on allocation steps, masks the least
  /// important ranks down to the step's budget.
  void update_and_allocate(int64_t global_step);

  /// orth_reg_weight times the mean ||A A^T - I||_F / ||B^T B - I||_F over the adapter's layers (Python PEFT
  /// adds it to the model's loss); a zero scalar when the adapter has no layers.
  at::Tensor orthogonal_regularization() const;

  /// The rank budget at `step`, and whether ranks are masked at that step.
  std::pair<int64_t, bool> budget_schedule(int64_t step) const;
  int64_t initial_budget() const { return initial_budget_; }
  int64_t target_budget() const { return target_budget_; }

 private:
  struct Scores {
    at::Tensor ipt, exp_avg_ipt, exp_avg_unc;
  };
  void update_importance();
  AdaLoraRankPattern mask_to_budget(int64_t budget);
  void mask_with(const AdaLoraRankPattern& pattern);
  void store_pattern(const AdaLoraRankPattern& pattern);

  torch::nn::Module& model_;
  std::string adapter_;
  AdaLoraConfig config_;
  int64_t initial_budget_ = 0;
  int64_t target_budget_ = 0;
  std::map<std::string, Scores> scores_;  // by parameter name
};

}  // namespace peft
