// Test helper: saves a safetensors file over and over, alternating its contents between all 1.0 and all
// 2.0, until killed. tests/test_checkpoint.cpp kills it at random moments.
//   peft_save_loop FILE NUMEL

#include <cstdlib>
#include <string>

#include <ATen/ops/full.h>

#include <peft/safetensors.h>

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const std::string path = argv[1];
  const int64_t numel = std::atoll(argv[2]);
  peft::StateDict versions[2];
  versions[0].insert("w", at::full({numel}, 1.0));
  versions[1].insert("w", at::full({numel}, 2.0));
  for (unsigned i = 0;; ++i) peft::safetensors::save_file(versions[i % 2], path);
}
