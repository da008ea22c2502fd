#include "routing/routing_check.h"

#include <map>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/modules/activation.h>

#include <peft/error.h>

#include "core/adapter_layer.h"
#include "routing/router.h"

namespace peft::detail {
namespace {

thread_local bool probe_reached = false;

// An adapter layer that only records that a call arrived.
class ProbeLayer final : public AdapterLayer {
 public:
  explicit ProbeLayer(const BaseLayer& base) : AdapterLayer(base, "peft_routing_probe") {}
  std::string peft_type() const override { return "ROUTING_PROBE"; }
  at::Tensor forward(torch::nn::Module&, const at::Tensor& input, BaseForward) override {
    probe_reached = true;
    return input;
  }
  std::tuple<at::Tensor, at::Tensor> forward_attention(torch::nn::MultiheadAttentionImpl&, const AttentionCall&,
                                                       AttentionForward) override {
    probe_reached = true;
    return {};
  }
  std::vector<std::string> container_names() const override { return {"peft_routing_probe"}; }
  void remove_adapter(torch::nn::Module&, const std::string&) override {}
};

// A one-unit layer of each kind.
torch::nn::LinearImpl probe_shape(torch::nn::LinearImpl*) { return torch::nn::LinearImpl(1, 1); }
torch::nn::EmbeddingImpl probe_shape(torch::nn::EmbeddingImpl*) { return torch::nn::EmbeddingImpl(1, 1); }
torch::nn::Conv1dImpl probe_shape(torch::nn::Conv1dImpl*) { return torch::nn::Conv1dImpl(1, 1, 1); }
torch::nn::Conv2dImpl probe_shape(torch::nn::Conv2dImpl*) { return torch::nn::Conv2dImpl(1, 1, 1); }
torch::nn::Conv3dImpl probe_shape(torch::nn::Conv3dImpl*) { return torch::nn::Conv3dImpl(1, 1, 1); }
torch::nn::LayerNormImpl probe_shape(torch::nn::LayerNormImpl*) {
  return torch::nn::LayerNormImpl(torch::nn::LayerNormOptions({1}));
}

bool probe_attention() {
  auto layer = std::make_shared<torch::nn::MultiheadAttentionImpl>(torch::nn::MultiheadAttentionOptions(1, 1));
  auto anchor = std::make_shared<AnchoredModuleDictImpl>();
  anchor->adapters = std::make_shared<ProbeLayer>(BaseLayer{LayerKind::MultiheadAttention, layer.get()});
  layer->register_module("peft_routing_probe", anchor);
  probe_reached = false;
  try {
    const at::Tensor none;
    layer->torch::nn::MultiheadAttentionImpl::forward(none, none, none);
  } catch (const std::exception&) {
  }
  return probe_reached;
}

// A probe layer's constructor draws its default init from LibTorch's global CPU generator (every kind but
// LayerNorm; Conv and MultiheadAttention refuse the empty shapes that would draw nothing). Injection must draw only
// the adapters' init, as Python PEFT does, or what a seeded program draws after its first injection would differ
// from what it draws after any later one: the generator is put back as it was.
class KeepGlobalGenerator {
 public:
  KeepGlobalGenerator() : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~KeepGlobalGenerator() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }
  KeepGlobalGenerator(const KeepGlobalGenerator&) = delete;
  KeepGlobalGenerator& operator=(const KeepGlobalGenerator&) = delete;

 private:
  at::Generator generator_;
  at::Tensor state_;
};

bool probe(LayerKind kind) {
  const KeepGlobalGenerator keep;  // the constructors below lock the generator themselves
  if (kind == LayerKind::MultiheadAttention) return probe_attention();
  return with_layer_type(kind, [kind](auto* type) {
    using Layer = std::remove_pointer_t<decltype(type)>;
    auto layer = std::make_shared<Layer>(probe_shape(type));
    auto anchor = std::make_shared<AnchoredModuleDictImpl>();
    anchor->adapters = std::make_shared<ProbeLayer>(BaseLayer{kind, layer.get()});
    layer->register_module("peft_routing_probe", anchor);
    probe_reached = false;
    try {
      // Bound through the dynamic linker like any caller's: to libpeft_interpose's forward when it wins.
      layer->Layer::forward(at::Tensor());
    } catch (const std::exception&) {
      // LibTorch's own forward ran and rejected the empty probe input: the call was not routed.
    }
    return probe_reached;
  });
}

}  // namespace

bool routing_reaches(LayerKind kind) {
  if (kind == LayerKind::LinearLike) return true;
  static std::mutex mutex;
  static std::map<LayerKind, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(kind);
  if (it == known.end()) it = known.emplace(kind, probe(kind)).first;
  return it->second;
}

bool needs_routing(const torch::nn::Module& module, LayerKind kind) {
  switch (kind) {
#define PEFT_CASE(Name) \
  case LayerKind::Name: return !dynamic_cast<const peft::Name##Impl*>(&module);
    PEFT_ROUTED_LAYERS(PEFT_CASE)
#undef PEFT_CASE
    case LayerKind::LinearLike: return false;
    case LayerKind::MultiheadAttention: return true;  // no drop-in
    case LayerKind::Parameter: return false;            // the parameter carries the delta; no call to reach
  }
  return true;
}

void check_routing(LayerKind kind) {
  if (routing_reaches(kind)) return;
  const std::string type = std::string("torch::nn::") + layer_kind_name(kind);
  std::string message = "peft-cpp: adapters injected into " + type + " layers would be silently skipped: forward calls in "
                        "this process go straight to LibTorch's " + type + "Impl::forward. ";
  if (interpose_library_loaded()) {
    message +=
        "libpeft_interpose is loaded but comes after LibTorch in the dynamic linker's search order. Link libpeft "
        "before LibTorch (CMake: target_link_libraries(your_target PRIVATE peft::peft), without listing "
        "torch/${TORCH_LIBRARIES} before it; plain linker flags: -lpeft_interpose -lpeft before -ltorch -ltorch_cpu "
        "-lc10), use a shared LibTorch, and load peft together with your program rather than later with "
        "dlopen(RTLD_LOCAL). ";
  } else {
    message += "libpeft_interpose, which routes calls of unmodified LibTorch layers, is not loaded (linked peft::core "
               "only, or built with PEFT_INTERPOSE=OFF): link peft::peft. ";
  }
  if (kind == LayerKind::MultiheadAttention) {
    message += "(There is no drop-in MultiheadAttention: its calls reach adapters only through libpeft_interpose.)";
  } else {
    message += "Or build the model from peft::" + std::string(layer_kind_name(kind)) +
               " (<peft/layers.h>), a drop-in " + type + " whose forward always reaches its adapters.";
  }
  throw RoutingError(message);
}

}  // namespace peft::detail
