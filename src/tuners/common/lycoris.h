#pragma once

// What LoHa and LoKr (Python PEFT's LycorisLayer / LycorisTuner) share: per-adapter rank and scaling, rank
// and module dropout, the forward that adds x * dW (linear or convolution), and the config fields.

#include "core/matching.h"
#include "core/method.h"
#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail {

struct LycorisRecord : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0;
  double alpha = 0;
  double scaling = 0;
  double rank_dropout = 0;
  double module_dropout = 0;
  bool rank_dropout_scale = true;
};

class LycorisLayer : public DictAdapterLayer {
 public:
  using DictAdapterLayer::DictAdapterLayer;

 protected:
  /// The update laid out like the base weight, scaled, without dropout.
  at::Tensor delta_weight(const AdapterRecord& record) const override = 0;
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active, BaseForward base_forward) override;
};

/// What a LoHa / LoKr config decides for each module's adapter: r and alpha (rank_pattern / alpha_pattern
/// resolved), scaling and the dropouts.
class LycorisSettings {
 public:
  template <class Config>
  explicit LycorisSettings(const Config& c)
      : ranks_(c.rank_pattern(), "rank_pattern"), alphas_(c.alpha_pattern(), "alpha_pattern"), r_(c.r()),
        alpha_(c.alpha()), rank_dropout_(c.rank_dropout()), module_dropout_(c.module_dropout()) {}
  void fill(LycorisRecord& record, const std::string& module_name) const;

 private:
  PatternLookup<int64_t> ranks_;
  PatternLookup<double> alphas_;
  int64_t r_;
  double alpha_, rank_dropout_, module_dropout_;
};

/// The method registration LoHa and LoKr share: Python's LycorisConfig fields, the layers they adapt.
template <class Config>
class LycorisMethod : public MethodOf<Config> {
 protected:
  explicit LycorisMethod(std::string prefix) : MethodOf<Config>(std::move(prefix)) {
    this->layers({LayerKind::Linear, LayerKind::Conv1d, LayerKind::Conv2d});
    this->field(PEFT_FIELD(r)).check(positive());
    this->field(PEFT_FIELD(alpha)).python_int();
    this->field(PEFT_FIELD(rank_dropout)).check(probability());
    this->field(PEFT_FIELD(module_dropout)).check(probability());
    this->field(PEFT_FIELD(use_effective_conv2d));
    this->field(PEFT_FIELD(rank_pattern)).check(positive_values());
    this->field(PEFT_FIELD(alpha_pattern));
    this->rank_fields({"r", "rank_pattern", "alpha", "alpha_pattern"});
  }
};

}  // namespace peft::detail
