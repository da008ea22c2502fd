# GLoRA: W_eff = W0 + W0 * A + B, b_eff = b0 + b0 * D + E + W0 @ C, each path lora / vector / constant / none.

def mlp_nobias_spec():
    """S.mlp_spec with a bias-less lin1."""
    spec = S.mlp_spec()
    spec["modules"][2] = S.L("lin1", 20, 20, bias=False)
    return spec


case("glora_mlp", S.mlp_spec,
     [("default", peft.GloraConfig(r=2, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.GloraConfig(r=3, config_A_B="vector", config_C="vector", config_D_E="vector",
                                 target_modules=["lin1", "lin2"], init_weights=False))],
     "GLoRA defaults (A/B lora, C lora, D/E constant) and a second all-vector adapter")
case("glora_constant_none", S.mlp_spec,
     [("default", peft.GloraConfig(r=4, config_A_B="constant", config_C="none", config_D_E="none",
                                   target_modules=["lin0", "lin2"])),
      ("other", peft.GloraConfig(r=2, config_A_B="none", config_C="lora", config_D_E="constant",
                                 target_modules=["lin0"], init_weights=False))],
     "GLoRA constant A/B with C/D/E off (default zero init, perturbed); second adapter with A/B off")
case("glora_mlp_nobias", mlp_nobias_spec,
     [("default", peft.GloraConfig(r=2, config_D_E="vector", target_modules=["lin0", "lin1"],
                                   init_weights=False))],
     "GLoRA with a bias-less lin1: there C, D and E are empty paths (zero buffers)")
