// Writes a sharded base checkpoint (SHARDS files of about SHARD_MB each, with an index) and a LoRA adapter for
// all of its layers, for the merge memory and interruption test.
//
//   make_sharded_checkpoint BASE_DIR ADAPTER_DIR SHARDS SHARD_MB

#include <filesystem>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: make_sharded_checkpoint BASE_DIR ADAPTER_DIR SHARDS SHARD_MB\n";
    return 1;
  }
  const std::filesystem::path base_dir = argv[1], adapter_dir = argv[2];
  const int shards = std::stoi(argv[3]);
  const int64_t shard_mb = std::stoll(argv[4]);
  std::filesystem::create_directories(base_dir);
  std::filesystem::create_directories(adapter_dir);
  constexpr int64_t kWidth = 1024, kLayersPerShard = 4, kRank = 8;
  const int64_t rows = shard_mb * 1024 * 1024 / 4 / kWidth / kLayersPerShard;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  peft::StateDict adapter;
  std::vector<std::string> targets;
  uint64_t total = 0;
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    peft::StateDict tensors;
    for (int64_t l = 0; l < kLayersPerShard; ++l) {
      const std::string module = "model.layers." + std::to_string(s * kLayersPerShard + l) + ".proj";
      tensors.insert(module + ".weight", torch::randn({rows, kWidth}));
      tensors.insert(module + ".bias", torch::randn({rows}));
      index["weight_map"][module + ".weight"] = name;
      index["weight_map"][module + ".bias"] = name;
      adapter.insert("base_model.model." + module + ".lora_A.weight", torch::randn({kRank, kWidth}) * 0.01);
      adapter.insert("base_model.model." + module + ".lora_B.weight", torch::randn({rows, kRank}) * 0.01);
      total += (rows * kWidth + rows) * 4;
    }
    peft::safetensors::save_file(tensors, (base_dir / name).string(), {{"format", "pt"}});
  }
  index["metadata"]["total_size"] = total;
  std::ofstream(base_dir / "model.safetensors.index.json") << index.dump(2);
  peft::safetensors::save_file(adapter, (adapter_dir / "adapter_model.safetensors").string(), {{"format", "pt"}});
  std::ofstream(adapter_dir / "adapter_config.json")
      << peft::LoraConfig().r(kRank).lora_alpha(16).target_modules({"proj"}).to_json_string();
  return 0;
}
