#include "routing/routing_check.h"

#include <mutex>
#include <set>
#include <utility>

#include <peft/error.h>
#include <peft/layers.h>

#include "core/tuner_layer.h"
#include "routing/router.h"

namespace peft::detail {
namespace {

thread_local bool probe_reached = false;

// A tuner that only records that a call arrived.
class ProbeTuner final : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  const char* peft_type() const override { return "ROUTING_PROBE"; }
  at::Tensor forward(torch::nn::Module&, const at::Tensor& input, BaseForward) override {
    probe_reached = true;
    return input;
  }
  std::vector<std::string> container_names() const override { return {"peft_routing_probe"}; }
  void remove_adapter(torch::nn::Module&, const std::string&) override {}

 protected:
  void publish() override {}
};

template <class Layer>
std::shared_ptr<Layer> make_probe_layer(std::shared_ptr<Layer> layer, LayerKind kind) {
  auto anchor = std::make_shared<AnchoredModuleDictImpl>();
  anchor->tuner = std::make_shared<ProbeTuner>(BaseLayer{kind, layer.get()});
  layer->register_module("peft_routing_probe", anchor);
  return layer;
}

template <class Layer>
bool reaches(at::Tensor (*probe)(Layer&, const at::Tensor&), Layer& layer) {
  probe_reached = false;
  try {
    probe(layer, at::Tensor());
  } catch (const std::exception&) {
    // LibTorch's own forward ran and rejected the empty probe input: the call was not routed.
  }
  return probe_reached;
}

bool probe(LayerKind kind, const CallerProbes& probes) {
  switch (kind) {
    case LayerKind::Linear: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::LinearImpl>(1, 1), kind);
      return reaches(probes.linear, *layer);
    }
    case LayerKind::Embedding: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::EmbeddingImpl>(1, 1), kind);
      return reaches(probes.embedding, *layer);
    }
    case LayerKind::Conv1d: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::Conv1dImpl>(torch::nn::Conv1dOptions(1, 1, 1)), kind);
      return reaches(probes.conv1d, *layer);
    }
    case LayerKind::Conv2d: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::Conv2dImpl>(torch::nn::Conv2dOptions(1, 1, 1)), kind);
      return reaches(probes.conv2d, *layer);
    }
    case LayerKind::Conv3d: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::Conv3dImpl>(torch::nn::Conv3dOptions(1, 1, 1)), kind);
      return reaches(probes.conv3d, *layer);
    }
    case LayerKind::LayerNorm: {
      static auto layer = make_probe_layer(std::make_shared<torch::nn::LayerNormImpl>(torch::nn::LayerNormOptions({1})), kind);
      return reaches(probes.layer_norm, *layer);
    }
    case LayerKind::LinearLike:
      return true;
  }
  return false;
}

}  // namespace

bool needs_routing(const torch::nn::Module& module, LayerKind kind) {
  switch (kind) {
    case LayerKind::Linear: return !dynamic_cast<const peft::LinearImpl*>(&module);
    case LayerKind::Embedding: return !dynamic_cast<const peft::EmbeddingImpl*>(&module);
    case LayerKind::Conv1d: return !dynamic_cast<const peft::Conv1dImpl*>(&module);
    case LayerKind::Conv2d: return !dynamic_cast<const peft::Conv2dImpl*>(&module);
    case LayerKind::Conv3d: return !dynamic_cast<const peft::Conv3dImpl*>(&module);
    case LayerKind::LayerNorm: return !dynamic_cast<const peft::LayerNormImpl*>(&module);
    case LayerKind::LinearLike: return false;
  }
  return true;
}

void check_routing(LayerKind kind, const CallerProbes& probes) {
  static std::mutex mutex;
  static std::set<std::pair<const CallerProbes*, LayerKind>> verified;
  std::lock_guard<std::mutex> lock(mutex);
  if (verified.count({&probes, kind})) return;
  if (!probe(kind, probes)) {
    const std::string type = std::string("torch::nn::") + layer_kind_name(kind);
    std::string message =
        "peft-cpp: adapters injected into " + type + " layers would be silently skipped: forward calls from "
        "this program go straight to LibTorch's " + type + "Impl::forward. ";
    if (interposition_built()) {
      message +=
          "Link libpeft before LibTorch (CMake: target_link_libraries(your_target PRIVATE peft::peft), without "
          "listing torch/${TORCH_LIBRARIES} before it; plain linker flags: -lpeft before -ltorch -ltorch_cpu -lc10), "
          "use a shared LibTorch, and load libpeft together with your program rather than later with "
          "dlopen(RTLD_LOCAL). ";
    } else {
      message += "This build of peft-cpp does not route calls (PEFT_INTERPOSE=OFF). ";
    }
    message += "Or build the model from peft::" + std::string(layer_kind_name(kind)) +
               " (<peft/layers.h>), a drop-in " + type + " whose forward always reaches its adapters.";
    throw RoutingError(message);
  }
  verified.insert({&probes, kind});
}

}  // namespace peft::detail
