// Arrow routing's math (Python PEFT's tuners/lora/arrow.py, ArrowLoraLinearLayer) and ArrowConfig's JSON form.

#include "tuners/lora/arrow.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/full.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>

#include "tuners/lora/init.h"
#include "tuners/lora/layer.h"

namespace peft::detail {

std::optional<ArrowConfig> JsonCodec<std::optional<ArrowConfig>>::read(JsonConfigReader& in, const std::string& key,
                                                                     const std::optional<ArrowConfig>&) {
  const nlohmann::json* value = in.raw(key);
  if (!value || value->is_null()) return std::nullopt;
  if (!value->is_object()) in.fail(key, "must be null or an ArrowConfig object");
  JsonConfigReader sub(*value, in.source() + ": " + key);
  ArrowConfig config;
  config.top_k(sub.get_int("top_k", config.top_k()));
  config.router_temperature(sub.get_number("router_temperature", config.router_temperature()));
  config.use_gks(sub.get_bool("use_gks", config.use_gks()));
  config.task_adapter_names(sub.get_string_list("task_adapter_names"));
  config.gks_adapter_names(sub.get_string_list("gks_adapter_names"));
  const nlohmann::json* seed = sub.raw("rng_seed");
  if (seed && !seed->is_null()) {
    if (!seed->is_number_integer()) sub.fail("rng_seed", "must be null or an integer, got " + seed->dump());
    config.rng_seed(seed->get<int64_t>());
  }
  const std::vector<std::string> unknown = sub.unread_keys();
  if (!unknown.empty()) {
    std::string names;
    for (const auto& name : unknown) names += (names.empty() ? "" : ", ") + name;
    TORCH_WARN(sub.source(), ": ignoring fields peft-cpp does not know: ", names);
  }
  return config;
}

nlohmann::json JsonCodec<std::optional<ArrowConfig>>::write(const std::optional<ArrowConfig>& value) {
  if (!value) return nullptr;
  auto list = [](const std::optional<std::vector<std::string>>& names) {
    return names ? nlohmann::json(*names) : nlohmann::json();
  };
  return {{"top_k", value->top_k()},
          {"router_temperature", value->router_temperature()},
          {"use_gks", value->use_gks()},
          {"task_adapter_names", list(value->task_adapter_names())},
          {"gks_adapter_names", list(value->gks_adapter_names())},
          {"rng_seed", value->rng_seed() ? nlohmann::json(*value->rng_seed()) : nlohmann::json()}};
}

namespace lora {
namespace {

const at::Tensor& arrow_weight_A(const LoraAdapter& a) { return a.linear_A->weight; }
const at::Tensor& arrow_weight_B(const LoraAdapter& a) { return a.linear_B->weight; }

// The task or general adapter `name` of the layer, as a LoRA Linear record.
const LoraAdapter& arrow_member(const AdapterSnapshot& state, const std::string& name, const std::string& role,
                                const std::string& layer_name) {
  const AdapterRecord* record = state.find(name);
  if (!record) {
    throw ConfigError("Arrow routing on layer '" + layer_name + "' needs the " + role + " adapter '" + name +
                      "', which this layer does not have.");
  }
  const LoraAdapter& a = lora(*record);
  if (!a.linear_A) {
    throw ConfigError("Arrow routing on layer '" + layer_name + "': the " + role + " adapter '" + name +
                      "' is not a LoRA Linear adapter.");
  }
  return a;
}

// Python's top_right_singular_vec_from_BA: the dominant eigenvector of A^T (B^T B) A by power iteration, in float32,
// from a normal start vector drawn with a private generator seeded rng_seed (Python's torch.Generator on A's device).
at::Tensor top_right_singular_vector(const at::Tensor& A, const at::Tensor& B, const std::optional<int64_t>& seed) {
  constexpr int kIterations = 15;
  constexpr double kEps = 1e-8;
  const at::Tensor A32 = A.to(at::kFloat);
  const at::Tensor B32 = B.to(at::kFloat);
  const at::Tensor C = at::matmul(B32.t(), B32);  // (r, r)
  at::Tensor v;
  if (seed) {
    // A fresh generator of A's device type, seeded (Python's torch.Generator(device=A.device).manual_seed(seed)).
    // Elsewhere than on the CPU it is a reseeded copy of the device's default generator; LibTorch 1.13's
    // Generator::clone keeps one reference too many, so that copy (a few hundred bytes per prototype computation)
    // is never freed: the CPU, where the tests run under LeakSanitizer, gets a generator of its own.
    at::Generator generator;
    if (A32.device().is_cpu()) {
      generator = at::detail::createCPUGenerator(static_cast<uint64_t>(*seed));
    } else {
      at::Generator global = at::globalContext().defaultGenerator(A32.device());
      std::lock_guard<std::mutex> lock(global.mutex());
      generator = global.clone();
    }
    generator.set_current_seed(static_cast<uint64_t>(*seed));
    v = at::randn({A32.size(1)}, generator, A32.options());
  } else {
    v = at::randn({A32.size(1)}, A32.options());
  }
  v = v / (v.norm() + kEps);
  for (int i = 0; i < kIterations; ++i) {
    const at::Tensor w = at::matmul(A32.t(), at::matmul(C, at::matmul(A32, v)));
    v = w / (w.norm() + kEps);
  }
  return v;
}

}  // namespace

void check_arrow_config(const ArrowConfig& config) {
  if (config.top_k() <= 0) throw ConfigError("top_k cannot be negative.");
  if (!(config.router_temperature() > 0)) throw ConfigError("router_temperature must be greater than 0.");
}

void check_arrow_lora_config(const LoraConfig& config) {
  check_arrow_config(*config.arrow_config());
  // Python's variant names in sorted order, those peft-cpp has.
  std::vector<std::string> variants;
  if (config.alora_invocation_tokens() && !config.alora_invocation_tokens()->empty()) {
    variants.push_back("alora_invocation_tokens");
  }
  variants.push_back("arrow_config");
  if (is_mica(config.init_lora_weights())) variants.push_back("mica");
  if (config.use_bdlora()) variants.push_back("use_bdlora");
  if (config.use_dora()) variants.push_back("use_dora");
  if (variants.size() == 1) return;
  std::string tuple;
  for (const std::string& name : variants) tuple += (tuple.empty() ? "'" : ", '") + name + "'";
  throw ConfigError("Invalid or unsupported variant combination: (" + tuple + ")");
}

bool is_gks_adapter_name(const std::string& name) {
  static const std::string prefix = "gks_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return std::all_of(name.begin() + prefix.size(), name.end(), [](unsigned char c) { return std::isdigit(c); });
}

ArrowRouter::ArrowRouter(const ArrowConfig& config)
    : config_(config), task_names_(config.task_adapter_names().value_or(std::vector<std::string>{})) {}

void ArrowRouter::on_adapter_change(const AdapterSnapshot& state) {
  // Python calls this whenever an adapter is added to the layer; here the forward compares its snapshot, which
  // catches the same changes (and deletions, after which Python's forward would fail on the missing adapter).
  std::vector<std::string> current;
  for (const auto& record : state.all) {
    const std::string& name = record->name;
    if (name != kArrowRouterName && !is_gks_adapter_name(name)) current.push_back(name);
  }
  std::vector<std::string> sorted_current = current, sorted_known = task_names_;
  std::sort(sorted_current.begin(), sorted_current.end());
  std::sort(sorted_known.begin(), sorted_known.end());
  if (sorted_current == sorted_known) return;
  if (task_names_.size() < current.size()) {
    gks_added_.clear();
    for (const std::string& name : current) {
      if (std::find(task_names_.begin(), task_names_.end(), name) == task_names_.end()) gks_added_.push_back(name);
    }
  }
  task_names_ = std::move(current);
  prototypes_ready_ = false;
}

void ArrowRouter::gen_know_sub(const AdapterSnapshot& state, const std::string& layer_name) {
  if (!config_.use_gks() || (gks_done_ && gks_added_.empty())) return;
  const std::vector<std::string> general = config_.gks_adapter_names().value_or(std::vector<std::string>{});
  if (general.empty()) {
    throw ConfigError("Arrow routing on layer '" + layer_name +
                      "': use_gks=true needs general adapters (arrow_config.gks_adapter_names is empty).");
  }
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> As, Bs;
  for (const std::string& name : general) {
    const LoraAdapter& a = arrow_member(state, name, "general", layer_name);
    As.push_back(arrow_weight_A(a));
    Bs.push_back(arrow_weight_B(a));
  }
  const at::Tensor mean_A = at::stack(As, 0).mean(0);  // (r, in_features)
  const at::Tensor mean_B = at::stack(Bs, 0).mean(0);  // (out_features, r)
  // The first time every task adapter, afterwards only those added since.
  const std::vector<std::string>& targets = gks_done_ ? gks_added_ : task_names_;
  std::vector<const LoraAdapter*> adapters;
  for (const std::string& name : targets) {
    const LoraAdapter& a = arrow_member(state, name, "task", layer_name);
    if (arrow_weight_A(a).sizes() != mean_A.sizes() || arrow_weight_B(a).sizes() != mean_B.sizes()) {
      throw ConfigError("GenKnowSub on layer '" + layer_name + "': task adapter '" + name +
                        "' has another shape than the general adapters (rank " +
                        std::to_string(arrow_weight_A(a).size(0)) + " vs " + std::to_string(mean_A.size(0)) + ").");
    }
    adapters.push_back(&a);
  }
  for (const LoraAdapter* a : adapters) {
    arrow_weight_A(*a).sub_(mean_A);
    arrow_weight_B(*a).sub_(mean_B);
  }
  gks_done_ = true;
  gks_added_.clear();
}

void ArrowRouter::build_prototypes(const AdapterSnapshot& state, const std::string& layer_name) {
  if (prototypes_ready_) return;
  if (task_names_.empty()) {
    throw ConfigError("Arrow routing on layer '" + layer_name + "' has no task adapter to route to.");
  }
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> prototypes;
  for (const std::string& name : task_names_) {
    const LoraAdapter& a = arrow_member(state, name, "task", layer_name);
    const at::Tensor& A = arrow_weight_A(a);
    prototypes.push_back(top_right_singular_vector(A, arrow_weight_B(a), config_.rng_seed()).to(A.options()));
  }
  prototypes_ = at::stack(prototypes, 0);  // (E, in_features)
  prototypes_ready_ = true;
}

at::Tensor ArrowRouter::delta(const LoraAdapter& router, const AdapterSnapshot& state, const at::Tensor& x,
                              const std::string& layer_name) {
  Prepared prepared;
  {
    // Python's forward runs GenKnowSub and the prototypes lazily; one forward at a time does it here.
    std::lock_guard<std::mutex> lock(mutex_);
    on_adapter_change(state);
    gen_know_sub(state, layer_name);
    build_prototypes(state, layer_name);
    prepared.names = task_names_;
    prepared.prototypes = prototypes_;
  }
  const int64_t experts = static_cast<int64_t>(prepared.names.size());
  if (config_.top_k() > experts) {
    throw ConfigError("Arrow routing on layer '" + layer_name + "': top_k=" + std::to_string(config_.top_k()) +
                      " is larger than the number of task adapters (" + std::to_string(experts) + ").");
  }
  std::vector<at::Tensor> As, Bs;
  std::vector<double> scales;
  for (const std::string& name : prepared.names) {
    const LoraAdapter& a = arrow_member(state, name, "task", layer_name);
    As.push_back(arrow_weight_A(a));
    Bs.push_back(arrow_weight_B(a));
    scales.push_back(a.scaling);
  }
  const at::Tensor input = x.scalar_type() == As.front().scalar_type() ? x : x.to(As.front().scalar_type());
  const int64_t in_features = input.size(-1);
  const at::Tensor tok = input.reshape({-1, in_features});  // (t, in_features)
  const int64_t tokens = tok.size(0);
  at::Tensor prototypes = prepared.prototypes;
  if (prototypes.device() != tok.device() || prototypes.scalar_type() != As.front().scalar_type()) {
    prototypes = prototypes.to(As.front().options());  // the model moved or was cast since they were computed
  }
  const at::Tensor scales_tensor = at::tensor(scales, at::TensorOptions().dtype(at::kDouble)).to(tok.options());

  // 1) similarity, sign-agnostic (a singular vector's sign is arbitrary)
  const at::Tensor sim = at::abs(at::matmul(tok, prototypes.t()));  // (t, E)
  // 2) top-k, softmax over all experts with the others at -inf
  const auto [top_values, top_indices] = at::topk(sim, config_.top_k(), 1);
  at::Tensor full_score = at::full({tokens, experts}, -std::numeric_limits<double>::infinity(), tok.options());
  full_score.scatter_(1, top_indices, top_values);
  const at::Tensor coeff = at::softmax(full_score / config_.router_temperature(), 1);  // (t, E)
  // 3-5) every expert's B A x, scaled
  const at::Tensor A_stack = at::stack(As, 0);  // (E, r, in_features)
  const at::Tensor B_stack = at::stack(Bs, 0);  // (E, out_features, r)
  const at::Tensor z = at::einsum("tf, erf -> ter", {tok, A_stack});
  at::Tensor y = at::einsum("ter, eor -> teo", {z, B_stack});
  y = y * scales_tensor.view({1, -1, 1});
  // 6) weighted sum over the experts, then the router's dropout (on the delta, as Python applies it)
  at::Tensor delta = at::einsum("te, teo -> to", {coeff, y});  // (t, out_features)
  if (router.dropout_impl) delta = router.dropout_impl->forward(delta);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(delta.size(-1));
  return delta.view(shape);
}

}  // namespace lora
}  // namespace peft::detail
