// Data-parallel training over c10d Gloo, through `peft-cpp launch`: 2 processes x batch B train the adapter to
// the same values as 1 process x batch 2B, and a crashed rank stops the job instead of hanging it.

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <peft/distributed.h>
#include <peft/peft.h>

namespace {

namespace fs = std::filesystem;

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string launch(int n, const std::string& args) {
  return std::string(PEFT_CLI_BINARY) + " launch -n " + std::to_string(n) + " -- " + PEFT_DISTRIBUTED_WORKER + " " + args;
}

TEST(Distributed, TwoProcessesTrainLikeOneWithTheWholeBatch) {
  const fs::path dir = fs::temp_directory_path() / ("peft_ddp_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  ASSERT_EQ(run(launch(1, "train " + (dir / "one").string())), 0);
  ASSERT_EQ(run(launch(2, "train " + (dir / "two").string())), 0);
  const auto one = peft::safetensors::load_file((dir / "one" / "adapter_model.safetensors").string());
  const auto two = peft::safetensors::load_file((dir / "two" / "adapter_model.safetensors").string());
  ASSERT_EQ(one.keys(), two.keys());
  for (const auto& item : one) {
    EXPECT_TRUE(torch::allclose(item.value(), two[item.key()], /*rtol=*/0, /*atol=*/1e-5)) << item.key();
  }
  // The run did train: lora_B starts at zero.
  EXPECT_GT(one["base_model.model.lin0.lora_B.weight"].abs().max().item<double>(), 1e-3);
  fs::remove_all(dir);
}

TEST(Distributed, ACrashedRankStopsTheJob) {
  // Rank 1 exits with status 3 after one step; rank 0 would wait in all_reduce. The launcher stops it and
  // reports the failure (CTest's timeout would catch a hang).
  EXPECT_EQ(run(launch(2, "crash")), 3);
}

TEST(Distributed, LaunchGivesEachProcessOneThreadUnlessTold) {
  // As torchrun: several ranks each with a thread pool per core would oversubscribe the cores.
  const std::string cli = PEFT_CLI_BINARY;
  EXPECT_EQ(run("env -u OMP_NUM_THREADS " + cli + " launch -n 2 -- /bin/sh -c 'test \"$OMP_NUM_THREADS\" = 1'"), 0);
  EXPECT_EQ(run("OMP_NUM_THREADS=3 " + cli + " launch -n 2 -- /bin/sh -c 'test \"$OMP_NUM_THREADS\" = 3'"), 0);
  EXPECT_EQ(run("env -u OMP_NUM_THREADS " + cli + " launch -n 1 -- /bin/sh -c 'test -z \"$OMP_NUM_THREADS\"'"), 0);
}

TEST(Distributed, EnvironmentErrorsNameTheVariable) {
  ::unsetenv("WORLD_SIZE");
  try {
    peft::distributed::Environment::from_env();
    ADD_FAILURE() << "no error without WORLD_SIZE";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("WORLD_SIZE"), std::string::npos) << e.what();
  }
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "2", 1);
  EXPECT_THROW(peft::distributed::Environment::from_env(), peft::ConfigError);
  ::setenv("RANK", "x", 1);
  EXPECT_THROW(peft::distributed::Environment::from_env(), peft::ConfigError);
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
}

}  // namespace
