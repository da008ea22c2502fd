#pragma once

// Helpers of the tests of the methods whose adapters share a tensor between layers (VeRA, RandLoRA, VB-LoRA):
// tests/methods/<method>.cpp, and the suite all frozen-random-basis methods run (shared_basis_suite.cpp).

#include <unistd.h>

#include <filesystem>
#include <string>

#include "support/method_variants.h"
#include "support/vector_model.h"
#include "support/vectors.h"

namespace peft_test {

/// tests/data/methods (reference files written by tests/data/methods/make_reference.py).
inline std::filesystem::path methods_data() { return vectors_dir().parent_path() / "methods"; }

/// An empty directory for one test.
inline std::filesystem::path fresh_temp_dir(const std::string& method, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("peft_" + method + "_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// The Mlp of method_variants.h, seeded, in eval mode; and its input.
inline Mlp seeded_mlp() {
  torch::manual_seed(1);
  Mlp model;
  model->eval();
  return model;
}
inline at::Tensor mlp_input() { return torch::randn({3, 16}, torch::Generator(at::detail::createCPUGenerator(7))); }

inline bool same_tensor(const at::Tensor& a, const at::Tensor& b) {
  return a.unsafeGetTensorImpl() == b.unsafeGetTensorImpl();
}

/// The model's buffer or parameter `key`; throws when there is none.
inline at::Tensor named_buffer(const torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_buffers();  // find() points into it: keep it alive
  const at::Tensor* found = named.find(key);
  if (!found) throw std::runtime_error("no buffer " + key);
  return *found;
}
inline at::Tensor named_parameter(const torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_parameters();  // find() points into it: keep it alive
  const at::Tensor* found = named.find(key);
  if (!found) throw std::runtime_error("no parameter " + key);
  return *found;
}

/// The case's vectors were made with torch.manual_seed(1234) before injecting its config: the same seed here must
/// give the same initial adapter, shared tensors included.
inline void expect_python_initialisation(const std::string& case_name) {
  const VectorCase c = VectorCase::load(case_name);
  VectorModel model = base_model(c);
  torch::manual_seed(1234);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
  const peft::StateDict python = c.tensors("peft_state_dict.safetensors");
  const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
  ASSERT_EQ(ours.size(), python.size());
  for (const auto& item : python) EXPECT_TRUE(torch::equal(ours[item.key()], item.value())) << item.key();
}

/// Offline merge (no model) of the case's adapter file gives Python's merged weights: the shared tensors travel
/// with the layers' ones, and name no module.
inline void expect_offline_merge_matches(const std::string& case_name) {
  const VectorCase c = VectorCase::load(case_name);
  const auto config = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict adapter = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  EXPECT_EQ(peft::adapted_module_names(*config, adapter), (std::vector<std::string>{"lin0", "lin1"}));
  EXPECT_TRUE(peft::replaced_base_tensors(*config, adapter).is_empty());
  const peft::OfflineMergeResult merged = peft::merge_into_weights(*config, adapter, c.tensors("base.safetensors"));
  EXPECT_TRUE(merged.modules_not_in_base.empty());
  const peft::StateDict python = c.tensors("merged_model.safetensors");
  for (const char* key : {"lin0.weight", "lin1.weight"}) {
    ASSERT_TRUE(merged.tensors.contains(key)) << key;
    EXPECT_LT(max_abs_diff(merged.tensors[key], python[key]), 1e-6) << key;
  }
}

/// A method whose adapters hold frozen random bases drawn from projection_prng_key and shared by all their layers
/// (VeRA, PVeRA, RandLoRA): what shared_basis_suite.cpp needs to run its checks on it.
struct SharedBasisMethod {
  std::string peft_type;              ///< "VERA"
  std::string prefix;                 ///< "vera": bases <prefix>_A / <prefix>_B, <prefix>_dropout, "<prefix>_only"
  std::string key_error;              ///< Python's error for a second projection_prng_key, up to " PRNG"
  std::string save_error;             ///< Python's error for mixed save_projection, up to " projection weights"
  nlohmann::json fields;              ///< further config fields every adapter of the suite gets
  std::vector<int64_t> bad_a_shape;   ///< a shape <prefix>_A never has for the suite's Mlp
  std::vector<std::string> bad_keys;  ///< file keys given that shape, each refused by name on load
  std::vector<int64_t> fc1_a_shape, fc2_b_shape;  ///< bases of a blocks model adapted on block 1's fc1/fc2 (r=4)
  double transposed_merge_atol;       ///< merged vs unmerged output of a Conv1D-style layer
  std::string regenerate_warning;     ///< part of Python's warning when a save_projection=false adapter loads
  int64_t a_rows_per_rank;            ///< rows of <prefix>_A per unit of r (PVeRA: 2, a mean and a log-variance half)
  std::string save_values;            ///< how Python's mixed save_projection error prints the values
};

/// Validating `fields` (+ peft_type, target_modules lin0/lin1) throws a ConfigError containing `text`.
inline void expect_config_error(const std::string& peft_type, nlohmann::json fields, const std::string& text) {
  fields["peft_type"] = peft_type;
  fields["target_modules"] = {"lin0", "lin1"};
  try {
    peft::config_from_json_string(fields.dump())->validate();
    ADD_FAILURE() << fields.dump() << " was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

}  // namespace peft_test
