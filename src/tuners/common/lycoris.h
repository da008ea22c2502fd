#pragma once

// What LoHa and LoKr (Python PEFT's LycorisLayer / LycorisTuner) share: per-adapter rank and scaling, rank
// and module dropout, the forward that adds x * dW (linear or convolution), and the config fields.

#include <nlohmann/json.hpp>

#include "core/json_config.h"
#include "core/matching.h"
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
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x,
                            const std::vector<std::shared_ptr<const AdapterRecord>>& active,
                            BaseForward base_forward) override;
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

/// kaiming_uniform(a=sqrt(5)), PyTorch's default weight init, in place.
void kaiming_default(const at::Tensor& tensor);

template <class Config>
void read_lycoris_fields(JsonConfigReader& in, Config& c) {
  c.r(in.get_int("r", c.r()));
  c.alpha(in.get_number("alpha", c.alpha()));
  c.rank_dropout(in.get_number("rank_dropout", c.rank_dropout()));
  c.module_dropout(in.get_number("module_dropout", c.module_dropout()));
  c.use_effective_conv2d(in.get_bool("use_effective_conv2d", c.use_effective_conv2d()));
  c.rank_pattern(in.get_int_map("rank_pattern"));
  c.alpha_pattern(in.get_number_map("alpha_pattern"));
}

template <class Config>
void write_lycoris_fields(const Config& c, nlohmann::json& out) {
  out["r"] = c.r();
  out["alpha"] = number_to_json(c.alpha());
  out["rank_dropout"] = c.rank_dropout();
  out["module_dropout"] = c.module_dropout();
  out["use_effective_conv2d"] = c.use_effective_conv2d();
  out["rank_pattern"] = pattern_to_json(c.rank_pattern());
  out["alpha_pattern"] = pattern_to_json(c.alpha_pattern());
}

/// The checks LyCORIS configs share (r, dropout ranges, layers_pattern).
void validate_lycoris(int64_t r, double rank_dropout, double module_dropout,
                      const PatternMap<int64_t>& rank_pattern);

}  // namespace peft::detail
