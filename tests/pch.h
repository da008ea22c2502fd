// Precompiled for the tests: LibTorch's full header set is slow to parse (~20 s per file here).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>
