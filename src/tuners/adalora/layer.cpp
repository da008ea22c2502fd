// AdaLoRA (Python PEFT's tuners/adalora): y = W x + (dropout(x) (A * E)^T B^T) * scaling / (ranknum + 1e-5),
// the SVD form of LoRA whose singular values E the rank allocator prunes.

#include "tuners/adalora/layer.h"

#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/matmul.h>

#include <peft/error.h>
#include <peft/tuners/adalora/config.h>

#include "core/json_config.h"
#include "core/model_adapters.h"
#include "tuners/common/config_checks.h"
#include "tuners/common/conv_functional.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/lora/config_json.h"

namespace peft::detail::adalora {
namespace {

const std::vector<DictAdapterLayer::Container>& containers() {
  static const std::vector<DictAdapterLayer::Container> c{
      {"lora_A"}, {"lora_B"}, {"lora_E"}, {"ranknum", false, /*in_checkpoint=*/false}};
  return c;
}

class AdaLoraLayer final : public DictAdapterLayer {
 public:
  explicit AdaLoraLayer(const BaseLayer& base) : DictAdapterLayer(base, "ADALORA", containers()) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x,
                            const std::vector<std::shared_ptr<const AdapterRecord>>& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const bool training = base.is_training();
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const std::string& n = record.name;
      const at::Tensor& a = param(A, n);
      at::Tensor input = x.to(a.scalar_type());
      if (record.dropout > 0) input = at::dropout(input, record.dropout, training);
      const at::Tensor divisor = param(RANKNUM, n) + 1e-5;
      at::Tensor update;
      if (base_layer().is_conv()) {
        const at::Tensor delta = (at::matmul(param(B, n), a * param(E, n)) * record.scaling / divisor)
                                     .reshape(base_layer().weight().sizes());
        update = conv_like(base, kind(), input, delta);
      } else {
        update = at::matmul(at::matmul(input, (a * param(E, n)).t()), param(B, n).t()) * record.scaling / divisor;
      }
      result = result + update.to(result.scalar_type());
    }
    return result;
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const std::string& n = record.name;
    at::Tensor delta = at::matmul(param(B, n), param(A, n) * param(E, n));
    if (base_layer().fan_in_fan_out) delta = delta.t();
    delta = delta * record.scaling / (param(RANKNUM, n) + 1e-5);
    return delta.reshape(base_layer().weight().sizes());
  }
};

class AdaLoraPlanner final : public LayerPlanner {
 public:
  explicit AdaLoraPlanner(AdaLoraConfig& config) : config_(config) {}

  std::unique_ptr<PendingChange> prepare_layer(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    int64_t in = base.in_features;
    switch (base.kind) {
      case LayerKind::Linear:
        if (config_.fan_in_fan_out()) {
          TORCH_WARN("fan_in_fan_out is set to True but the target module is `torch::nn::Linear`. Setting fan_in_fan_out to False.");
          config_.fan_in_fan_out(false);
        }
        break;
      case LayerKind::LinearLike:
        if (base.fan_in_fan_out && !config_.fan_in_fan_out()) {
          TORCH_WARN("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
          config_.fan_in_fan_out(true);
        }
        break;
      case LayerKind::Conv2d: {
        const ConvGeometry g = conv_geometry(*base.module, base.kind);
        if (g.groups != 1) {
          throw UnsupportedLayerError("AdaLoRA cannot adapt the grouped convolution '" + request.module_name +
                                      "' (groups=" + std::to_string(g.groups) + ").");
        }
        in = g.in_channels * g.kernel[0] * g.kernel[1];
        break;
      }
      default:
        unsupported_layer("AdaLoRA", *base.module, "`torch::nn::Linear`, `torch::nn::Conv2d` and peft::LinearLike (Conv1D)");
    }
    const int64_t init_r = config_.init_r();
    int64_t r = init_r;
    // A saved adapter's rank_pattern: the layer keeps only its allocated ranks (ranknum stays init_r, as
    // after Python's resize_modules_by_rank_pattern).
    if (const std::vector<bool>* kept = pattern_for(request.module_name, request.adapter_name)) {
      if (static_cast<int64_t>(kept->size()) != init_r) {
        throw ConfigError("rank_pattern['" + request.module_name + ".lora_E'] has " + std::to_string(kept->size()) +
                          " entries but init_r is " + std::to_string(init_r));
      }
      r = std::count(kept->begin(), kept->end(), true);
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->scaling = config_.lora_alpha() > 0 ? config_.lora_alpha() : static_cast<double>(r);
    record->dropout = config_.lora_dropout();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor a = at::empty({r, in}, options), b = at::empty({base.out_features, r}, options),
               e = at::empty({r, 1}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_lora_weights()) {
        e.zero_();
        a.normal_(0.0, 0.02);
        b.normal_(0.0, 0.02);
      } else {
        a.normal_(), e.normal_(), b.normal_();
      }
    }
    // ranknum is bookkeeping, never loaded: it holds its value even with low_cpu_mem_usage.
    const at::Tensor ranknum = at::full({1}, static_cast<double>(r > 0 ? init_r : 0), adapter_options(base, false));
    ranknum.set_requires_grad(false);
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = record;
    adapter.tensors = {{A, a}, {B, b}, {E, e}, {RANKNUM, ranknum}};
    return prepare_dict_adapter(request, "ADALORA", containers(), [base] { return std::make_shared<AdaLoraLayer>(base); },
                                std::move(adapter));
  }

 private:
  const std::vector<bool>* pattern_for(const std::string& module, const std::string& adapter) const {
    if (!config_.rank_pattern()) return nullptr;
    const AdaLoraRankPattern& pattern = *config_.rank_pattern();
    for (const std::string& key : {module + ".lora_E", module + ".lora_E." + adapter}) {
      auto it = pattern.find(key);
      if (it != pattern.end()) return &it->second;
    }
    return nullptr;
  }

  AdaLoraConfig& config_;
};

AdaLoraRankPattern read_rank_pattern(JsonConfigReader& in) {
  const nlohmann::json* raw = in.raw("rank_pattern");
  if (!raw) return {};
  if (!raw->is_object()) in.fail("rank_pattern", "must be null or an object of boolean lists");
  AdaLoraRankPattern pattern;
  for (const auto& [key, value] : raw->items()) {
    if (!value.is_array()) in.fail("rank_pattern", "entry '" + key + "' must be a list of booleans");
    std::vector<bool> kept;
    for (const auto& flag : value) {
      if (!flag.is_boolean()) in.fail("rank_pattern", "entry '" + key + "' must be a list of booleans");
      kept.push_back(flag.get<bool>());
    }
    pattern[key] = std::move(kept);
  }
  return pattern;
}

class AdaLoraTuner final : public Tuner {
 public:
  const char* peft_type() const override { return "ADALORA"; }
  const char* prefix() const override { return "lora_"; }

  std::shared_ptr<PeftConfig> read_config(JsonConfigReader& in) const override {
    auto c = std::make_shared<AdaLoraConfig>();
    c->init_r(in.get_int("init_r", c->init_r()));
    c->target_r(in.get_int("target_r", c->target_r()));
    c->tinit(in.get_int("tinit", c->tinit()));
    c->tfinal(in.get_int("tfinal", c->tfinal()));
    c->deltaT(in.get_int("deltaT", c->deltaT()));
    c->beta1(in.get_number("beta1", c->beta1()));
    c->beta2(in.get_number("beta2", c->beta2()));
    c->orth_reg_weight(in.get_number("orth_reg_weight", c->orth_reg_weight()));
    if (in.raw("total_step")) c->total_step(in.get_int("total_step", 0));
    if (in.raw("rank_pattern")) c->rank_pattern(read_rank_pattern(in));
    c->lora_alpha(in.get_number("lora_alpha", c->lora_alpha()));
    c->lora_dropout(in.get_number("lora_dropout", c->lora_dropout()));
    c->fan_in_fan_out(in.get_bool("fan_in_fan_out", c->fan_in_fan_out()));
    c->bias(in.get_string("bias", c->bias()));
    c->init_lora_weights(in.get_bool("init_lora_weights", c->init_lora_weights()));
    c->r(in.get_int("r", c->r()));
    // LoraConfig fields AdaLoRA does not use (Python rejects DoRA and LoftQ for AdaLoRA outright).
    in.accept_only_neutral("use_rslora", "AdaLoRA scales by lora_alpha / ranknum");
    in.accept_only_neutral("use_dora", "ADALORA does not support DoRA.");
    in.accept_only_neutral("lora_bias", "AdaLoRA has no lora_bias");
    in.accept_only_neutral("alpha_pattern", "AdaLoRA has no alpha_pattern", nlohmann::json::object());
    in.accept_only_neutral("target_parameters", "targeting parameters is not supported");
    lora::read_unused_lora_fields(in);
    return c;
  }

  void write_config(const PeftConfig& base, nlohmann::json& out) const override {
    const auto& c = static_cast<const AdaLoraConfig&>(base);
    out["init_r"] = c.init_r();
    out["target_r"] = c.target_r();
    out["tinit"] = c.tinit();
    out["tfinal"] = c.tfinal();
    out["deltaT"] = c.deltaT();
    out["beta1"] = c.beta1();
    out["beta2"] = c.beta2();
    out["orth_reg_weight"] = c.orth_reg_weight();
    out["total_step"] = c.total_step() ? nlohmann::json(*c.total_step()) : nlohmann::json(nullptr);
    out["rank_pattern"] = nullptr;
    if (c.rank_pattern()) {
      out["rank_pattern"] = nlohmann::json::object();
      for (const auto& [key, kept] : *c.rank_pattern()) out["rank_pattern"][key] = kept;
    }
    out["lora_alpha"] = number_to_json(c.lora_alpha());
    out["lora_dropout"] = c.lora_dropout();
    out["fan_in_fan_out"] = c.fan_in_fan_out();
    out["bias"] = c.bias();
    out["init_lora_weights"] = c.init_lora_weights();
    out["r"] = c.r();
    out["use_rslora"] = false;
    out["use_dora"] = false;
    out["lora_bias"] = false;
    out["alpha_pattern"] = nlohmann::json::object();
    out["target_parameters"] = nullptr;
    lora::write_unused_lora_fields(out);
  }

  bool checks_other_adapters() const override { return true; }

  void check_new_adapter(const PeftConfig& config,
                         const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    int trainable = config.inference_mode() ? 0 : 1;
    for (const auto& other : others) {
      if (other->peft_type() == "ADALORA" && !other->inference_mode()) ++trainable;
    }
    if (trainable > 1) {
      throw ConfigError("AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set "
                        "inference_mode to True for all adapters except the one you want to train.");
    }
  }

  // Only the ranks the allocator kept are saved (Python's resize_state_dict_by_rank_pattern).
  void adjust_checkpoint(const PeftConfig& base, StateDict& state_dict) const override {
    const auto& c = static_cast<const AdaLoraConfig&>(base);
    if (!c.rank_pattern()) return;
    for (const auto& [key, kept] : *c.rank_pattern()) {
      const size_t dot = key.rfind(".lora_E");
      if (dot == std::string::npos) continue;
      const std::string prefix = key.substr(0, dot);
      std::vector<int64_t> index;
      for (size_t i = 0; i < kept.size(); ++i) {
        if (kept[i]) index.push_back(static_cast<int64_t>(i));
      }
      const auto rank = static_cast<int64_t>(index.size());
      for (const char* name : {"lora_E", "lora_A", "lora_B"}) {
        at::Tensor* t = state_dict.find(prefix + "." + name);
        if (!t) continue;
        const int64_t dim = std::string(name) == "lora_B" ? 1 : 0;
        if (t->size(dim) == rank) continue;
        at::Tensor positions = at::empty({rank}, at::TensorOptions().dtype(at::kLong));
        std::copy(index.begin(), index.end(), positions.data_ptr<int64_t>());
        *t = t->index_select(dim, positions.to(t->device()));
      }
    }
  }

  std::unique_ptr<LayerPlanner> make_planner(PeftConfig& config) const override {
    return std::make_unique<AdaLoraPlanner>(static_cast<AdaLoraConfig&>(config));
  }
};

}  // namespace

std::vector<AdaLoraLayerRef> adalora_layers(const torch::nn::Module& model, const std::string& adapter) {
  std::vector<AdaLoraLayerRef> out;
  for (const AdaptedLayer& layer : adapted_layers(model)) {
    if (std::string(layer.tuner->peft_type()) != "ADALORA" || !layer.tuner->has_adapter(adapter)) continue;
    out.push_back({layer.name, static_cast<DictAdapterLayer*>(layer.tuner)});
  }
  return out;
}

const Tuner& adalora_tuner() {
  static const AdaLoraTuner tuner;
  return tuner;
}

}  // namespace peft::detail::adalora
