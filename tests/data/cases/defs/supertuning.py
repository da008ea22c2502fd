# Super-Tuning: a sparse support of the weight (top / bottom magnitude) is trained; optional LoRA ("Supra").
case("supertuning_mlp", S.mlp_spec,
     [("default", peft.SupertuningConfig(sparsity=0.9, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.SupertuningConfig(sparsity=0.8, select_top=False, r=2, lora_alpha=3.0,
                                       target_modules=["lin1", "lin2"], init_weights=False))],
     "Super (top 10%) and Supra (bottom 20% + rank-2 LoRA, alpha 3) adapters")
case("supertuning_supra_default", S.mlp_spec,
     [("default", peft.SupertuningConfig(r=4, sparsity=0.9, target_modules=["lin0", "lin1", "lin2"]))],
     "Supra with default init (values and B zero, perturbed), lora_alpha defaulting to 2r")
case("supertuning_no_indices", S.mlp_spec,
     [("default", peft.SupertuningConfig(sparsity=0.95, save_precomputed_indices=False, target_modules=["lin0", "lin1"],
                                         init_weights=False))],
     "save_precomputed_indices=False: the indices are not saved and are recomputed from the base weights")
