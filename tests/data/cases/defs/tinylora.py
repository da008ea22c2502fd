# TinyLoRA: frozen truncated-SVD factors of each base weight (tinylora_A, tinylora_B, saved), a fixed random
# tensor P (u x r x r) per layer from projection_seed + the layer's index (saved with save_projection), and a
# tiny trained vector v per group of layers (weight_tying). Python keeps v on the tuner: inject_adapter_in_model
# loses it for get_peft_model_state_dict, so the cases go through get_peft_model.

case("tinylora_mlp", S.mlp_spec,
     [("default", peft.TinyLoraConfig(r=2, u=5, target_modules=["lin0", "lin1", "lin2"])),
      ("other", peft.TinyLoraConfig(r=3, u=4, weight_tying=1.0, projection_seed=7, tinylora_dropout=0.1,
                                    init_weights="uniform", init_v_bound=0.3, target_modules=["lin1", "lin2"]))],
     "TinyLoRA one v per layer (zero init, perturbed) and a second adapter with one v shared by its two layers "
     "(weight_tying=1.0, uniform init); via get_peft_model (see meta)", via_peft_model=True)
case("tinylora_tying_no_projection", lambda: S.blocks_spec(n=5, root="encoder"),
     [("default", peft.TinyLoraConfig(r=3, u=4, weight_tying=0.75, save_projection=False, init_weights="uniform",
                                      init_v_bound=0.4, bias="tinylora_only", target_modules=["fc1", "fc2"]))],
     "TinyLoRA weight_tying=0.75 on 10 layers: round(2.5) = 2 groups (Python's round half to even); "
     "save_projection=False (P regenerated from projection_seed); bias='tinylora_only'; via get_peft_model (see meta)",
     via_peft_model=True)
case("tinylora_blocks_layers", lambda: S.blocks_spec(root="encoder"),
     [("default", peft.TinyLoraConfig(r=2, u=3, weight_tying=0.5, projection_seed=11, init_weights="uniform",
                                      init_v_bound=0.5, target_modules=["fc1", "fc2"], layers_to_transform=[1, 3],
                                      layers_pattern="blocks"))],
     "TinyLoRA on blocks 1 and 3 only (layers_to_transform), two groups of two layers; via get_peft_model (see meta)",
     via_peft_model=True)
case("tinylora_gpt2conv", S.gpt2conv_spec,
     [("default", peft.TinyLoraConfig(r=6, u=3, fan_in_fan_out=True, init_weights="uniform", init_v_bound=0.5,
                                      target_modules=["c_fc", "c_proj"]))],
     "TinyLoRA on GPT-2 Conv1D (fan_in_fan_out); c_proj has 4 outputs < r, so its rank is 4; "
     "via get_peft_model (see meta)", via_peft_model=True)
case("tinylora_embedding", S.emb_spec,
     [("default", peft.TinyLoraConfig(r=2, u=3, init_weights="uniform", init_v_bound=0.5,
                                      target_modules=["emb", "linear"]))],
     "TinyLoRA on an Embedding (F.embedding of tinylora_B) and a Linear; via get_peft_model (see meta)",
     via_peft_model=True)
