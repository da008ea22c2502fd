# DeFT options the shared set (deft_mlp: relu, r=2) does not cover.
case("deft_qr_alpha", S.mlp_spec,
     [("default", peft.DeftConfig(r=3, decomposition_method="qr", alpha=6, target_modules=["lin0", "lin1"],
                                  init_weights=False))],
     "DeFT with the QR projection and alpha / r scaling")
case("deft_para", S.mlp_spec, [("default", peft.DeftConfig(r=2, para=True, target_modules=["lin0", "lin1"]))],
     "DeFT PaRa (pure subspace removal, no R)")
case("deft_identity_init", S.mlp_spec, [("default", peft.DeftConfig(r=4, target_modules=["lin0", "lin1"]))],
     "DeFT default identity init (perturbed so that it changes the output)")
case("deft_gpt2conv", S.gpt2conv_spec,
     [("default", peft.DeftConfig(r=6, fan_in_fan_out=True, target_modules=["c_fc", "c_proj"], init_weights=False))],
     "DeFT on GPT-2 Conv1D (fan_in_fan_out); c_proj has out_features 4 < r, so its rank is capped at 4")
