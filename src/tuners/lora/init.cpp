#include "tuners/lora/init.h"

#include <cctype>

#include <ATen/CPUGeneratorImpl.h>

#include "tuners/common/svd_lowrank.h"

#include <cmath>

#include <ATen/ops/diag.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sqrt.h>
#include <torch/linalg.h>
#include <torch/nn/init.h>

#include <peft/error.h>

#include "core/tensor_slots.h"

namespace peft::detail::lora {
namespace {

void copy_into(const at::Tensor& dst, const at::Tensor& src) { dst.copy_(src.reshape(dst.sizes())); }

// Base weight as (out, in) in float32, whatever its storage layout and dtype.
at::Tensor base_weight_out_in(const BaseLayer& base, const char* method) {
  at::Tensor weight = base.weight();
  if (weight.device().is_meta()) {
    throw ConfigError(std::string("init_lora_weights='") + method +
                      "' derives the adapter from the base weight, but the weight of this layer is on the meta device");
  }
  const auto dtype = weight.scalar_type();
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    throw ConfigError(std::string("Please initialize ") + method + " under float32, float16, or bfloat16.");
  }
  weight = weight.to(at::kFloat);
  return base.fan_in_fan_out ? weight.t() : weight;
}

at::Tensor stored_layout(const BaseLayer& base, const at::Tensor& out_in, const at::Tensor& like) {
  return (base.fan_in_fan_out ? out_in.t() : out_in).to(like.scalar_type()).contiguous();
}

}  // namespace

std::optional<int64_t> pissa_niter(const std::string& method) {
  static const std::string prefix = "pissa_niter_";
  if (method.compare(0, prefix.size(), prefix) != 0 || method.size() == prefix.size()) return std::nullopt;
  for (size_t i = prefix.size(); i < method.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(method[i]))) return std::nullopt;
  }
  return std::stoll(method.substr(prefix.size()));
}

bool is_mica(const InitLoraWeights& init) {
  if (init.is_bool()) return false;
  std::string lower = init.method();
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower == "mica";
}

namespace {

// MiCA (Python's mica_init): B from the r left singular vectors of the smallest singular values of `out_in`, A zero.
void mica(const at::Tensor& out_in, int64_t r, const at::Tensor& A, const at::Tensor& B, const char* what) {
  const int64_t max_r = std::min(out_in.size(0), out_in.size(1));
  if (r > max_r) {
    throw ConfigError(std::string("MiCA requires `r` <= min(") + what + ") but got r=" + std::to_string(r) +
                      " for a layer with weight shape " + c10::str(out_in.sizes()) + " (max usable r is " +
                      std::to_string(max_r) + ").");
  }
  auto [U, S, Vh] = torch::linalg::svd(out_in, /*full_matrices=*/false, c10::nullopt);
  copy_into(B, U.slice(1, U.size(1) - r, U.size(1)).contiguous());
  A.zero_();
}

}  // namespace

bool rewrites_base_weight(const std::string& method) {
  return method == "pissa" || method == "olora" || pissa_niter(method).has_value();
}

bool is_supported_init(const std::string& method) {
  return is_mica(InitLoraWeights(method)) || method == "gaussian" || method == "orthogonal" || method == "pissa" || method == "olora" ||
         method == "eva" || method == "lora_ga" || pissa_niter(method).has_value();
}

std::optional<at::Tensor> initialise(const InitLoraWeights& init, const BaseLayer& base, int64_t r, double scaling,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& B_bias) {
  at::NoGradGuard no_grad;
  if (base.kind == LayerKind::Embedding) {
    if (is_mica(init)) {
      // Python's Embedding.mica_init: the effective projection is weight^T (embedding_dim, num_embeddings).
      mica(base_weight_out_in(base, "MiCA").t(), r, A, B, "num_embeddings, embedding_dim");
      return std::nullopt;
    }
    // Python creates both with randn and, for any truthy init, sets A to zeros and B to normal.
    if (init.enabled()) {
      A.zero_();
      B.normal_();
    } else {
      A.normal_();
      B.normal_();
    }
    return std::nullopt;
  }
  // Linear and conv layers start from LibTorch's default layer init (Python's nn.Linear/nn.ConvNd init),
  // drawn once per layer in Python's order, so a seed gives Python's values. Conv layers got it from their
  // constructor; linear ones are built as uninitialised shells and get it here.
  if (!base.is_conv()) {
    default_init(A, at::Tensor());
    default_init(B, B_bias);
  }
  if (!init.enabled()) return std::nullopt;
  const std::string& method = init.method();
  if (base.is_conv() && !(init.is_bool() || method == "gaussian" || method == "lora_ga")) {
    throw ConfigError("Unknown initialization init_lora_weights='" + method + "' for a convolution layer");
  }
  if (is_mica(init)) {
    mica(base_weight_out_in(base, "MiCA"), r, A, B, "in_features, out_features");
    return std::nullopt;
  }
  if (init.is_bool() || method == "lora_ga") {
    // lora_ga without gradients (peft-cpp never has them) falls back to the default init, as in Python.
    torch::nn::init::kaiming_uniform_(A, std::sqrt(5.0));
    B.zero_();
    if (B_bias.defined()) B_bias.zero_();
    return std::nullopt;
  }
  if (method == "gaussian") {
    A.normal_(0.0, 1.0 / static_cast<double>(r));
    B.zero_();
    if (B_bias.defined()) B_bias.zero_();
    return std::nullopt;
  }
  if (method == "eva") {
    B.zero_();  // the data-driven part of EVA runs in Python; a loaded checkpoint overwrites both anyway
    return std::nullopt;
  }
  if (method == "orthogonal") {
    if (r % 2 != 0) {
      throw ConfigError("Orthogonal initialization requires the LoRA rank to be even, got " + std::to_string(r) +
                        " instead.");
    }
    const at::Tensor Q = std::get<0>(torch::linalg::qr(at::randn({r, r}), "reduced"));
    const at::Tensor q_odd = Q.slice(0, 0, r, 2);
    const at::Tensor q_even = Q.slice(0, 1, r, 2);
    copy_into(A, at::matmul(at::randn({base.in_features, r / 2}), q_odd).t() / 10.0);
    copy_into(B, at::matmul(at::randn({r / 2, base.out_features}).t(), q_even) / 10.0);
    return std::nullopt;
  }
  const at::Tensor weight = base_weight_out_in(base, method.c_str());
  if (method == "pissa") {
    // W = V S U^T; the adapter takes the top r singular directions, scaled so scaling * B A equals them.
    auto [V, S, Uh] = torch::linalg::svd(weight, /*full_matrices=*/false, c10::nullopt);
    const at::Tensor Sr = S.slice(0, 0, r) / scaling;
    const at::Tensor root = at::diag(at::sqrt(Sr));
    const at::Tensor lora_A = at::matmul(root, Uh.slice(0, 0, r));
    const at::Tensor lora_B = at::matmul(V.slice(1, 0, r), root);
    copy_into(A, lora_A);
    copy_into(B, lora_B);
    return stored_layout(base, weight - scaling * at::matmul(lora_B, lora_A), base.weight());
  }
  if (const auto niter = pissa_niter(method)) {
    // Python's fast PiSSA: torch.svd_lowrank(weight, r, niter), its random projection from the global generator
    // (after the layer's default init, as in Python), so a seed gives Python's adapter.
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    auto [Vr, S, Ur] = svd_lowrank(weight, r, *niter, generator);
    const at::Tensor root = at::diag(at::sqrt(S / scaling));
    const at::Tensor lora_A = at::matmul(root, Ur.t());
    const at::Tensor lora_B = at::matmul(Vr, root);
    copy_into(A, lora_A);
    copy_into(B, lora_B);
    return stored_layout(base, weight - scaling * at::matmul(lora_B, lora_A), base.weight());
  }
  if (method == "olora") {
    auto [Q, R] = torch::linalg::qr(weight, "reduced");
    const at::Tensor lora_B = Q.slice(1, 0, r).contiguous();
    const at::Tensor lora_A = R.slice(0, 0, r).contiguous();
    copy_into(A, lora_A);
    copy_into(B, lora_B);
    return stored_layout(base, weight - scaling * at::matmul(lora_B, lora_A), base.weight());
  }
  throw ConfigError("Unknown initialization init_lora_weights='" + method + "'");
}

}  // namespace peft::detail::lora
