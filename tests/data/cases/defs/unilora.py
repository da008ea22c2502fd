# UniLoRA: one trainable vector theta_d per adapter; every LoRA entry of every adapted layer is theta_d at a fixed
# index (numpy PCG64 from proj_seed), times 1 / sqrt(how often that index is used). Python keeps theta_d on the
# tuner: inject_adapter_in_model loses it for get_peft_model_state_dict, so the cases go through get_peft_model.

case("unilora_mlp", S.mlp_spec,
     [("default", peft.UniLoraConfig(r=2, theta_d_length=50, proj_seed=7, init_theta_d_bound=0.5, target_modules=["lin0", "lin1"])),
      ("other", peft.UniLoraConfig(r=3, theta_d_length=40, unilora_dropout=0.1, init_weights=False,
                                   target_modules=["lin1", "lin2"]))],
     "UniLoRA (indices regenerated from proj_seed, not saved) and a second adapter with its own theta_d; "
     "via get_peft_model (see meta)", via_peft_model=True)
case("unilora_save_indices", S.mlp_spec,
     [("default", peft.UniLoraConfig(r=4, theta_d_length=30, save_indices=True, init_weights=False,
                                     bias="unilora_only", target_modules=["lin0", "lin2"]))],
     "UniLoRA with save_indices (index and scale buffers in the checkpoint) and bias='unilora_only'; "
     "via get_peft_model (see meta)", via_peft_model=True)
case("unilora_gpt2conv", S.gpt2conv_spec,
     [("default", peft.UniLoraConfig(r=8, theta_d_length=10001, proj_seed=3, fan_in_fan_out=True, init_theta_d_bound=0.3,
                                     target_modules=["c_fc", "c_proj"]))],
     "UniLoRA on GPT-2 Conv1D (fan_in_fan_out); theta_d_length > 10000 with more than 1/50 of it drawn takes "
     "numpy's tail-shuffle path of choice(); via get_peft_model (see meta)", via_peft_model=True)
case("unilora_blocks_layers", lambda: S.blocks_spec(root="encoder"),
     [("default", peft.UniLoraConfig(r=2, theta_d_length=64, init_theta_d_bound=0.3, target_modules=["fc1", "fc2"],
                                     layers_to_transform=[1, 3], layers_pattern="blocks"))],
     "UniLoRA on blocks 1 and 3 only (layers_to_transform); via get_peft_model (see meta)", via_peft_model=True)
