#pragma once

// peft-cpp: Hugging Face PEFT's adapter injection for LibTorch models.

#include <peft/checkpoint.h>
#include <peft/config.h>
#include <peft/error.h>
#include <peft/inject.h>
#include <peft/layers.h>
#include <peft/lifecycle.h>
#include <peft/offline_merge.h>
#include <peft/safetensors.h>
#include <peft/state_dict.h>
#include <peft/target_modules.h>
#include <peft/tuners/adalora/config.h>
#include <peft/tuners/adalora/rank_allocator.h>
#include <peft/tuners/boft/config.h>
#include <peft/tuners/c3a/config.h>
#include <peft/tuners/fourierft/config.h>
#include <peft/tuners/hra/config.h>
#include <peft/tuners/ia3/config.h>
#include <peft/tuners/ln_tuning/config.h>
#include <peft/tuners/loha/config.h>
#include <peft/tuners/lokr/config.h>
#include <peft/tuners/lora/config.h>
#include <peft/tuners/miss/config.h>
#include <peft/tuners/oft/config.h>
