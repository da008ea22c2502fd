# FRoD: per category of layers (the last parts of a layer's name) a basis V computed from the base weights and a
# sparse COO pattern drawn from projection_prng_key, shared by the category's layers; per layer U (not saved),
# lambda_l and the sparse values. Python keeps V and the pattern on the tuner: inject_adapter_in_model loses them
# for get_peft_model_state_dict, so the cases go through get_peft_model.

case("frod_mlp", S.mlp_spec,
     [("default", peft.FrodConfig(target_modules=["lin0", "lin1", "lin2"], init_weights=False, progressbar=False)),
      ("other", peft.FrodConfig(target_modules=["lin1", "lin2"], frod_dropout=0.1, init_weights=False,
                                progressbar=False))],
     "FRoD on an MLP: lin0/lin1 (tall, QR basis) and lin2 (wide, SVD basis), random S values; a second adapter "
     "with dropout, added with add_adapter, which copies the first adapter's V and pattern of each category "
     "(its files hold them); via get_peft_model (see meta)", via_peft_model=True)
case("frod_blocks_layers", lambda: S.blocks_spec(root="encoder"),
     [("default", peft.FrodConfig(target_modules=["fc1", "fc2"], layers_to_transform=[0, 1, 3], layers_pattern="blocks",
                                  sparse_rate=0.1, regularization_alpha=0.01, projection_prng_key=5,
                                  bias="frod_only", progressbar=False))],
     "FRoD on blocks 0, 1 and 3 (layers_to_transform): categories fc1 / fc2 shared by three layers each, "
     "bias='frod_only', default init then perturbed; via get_peft_model (see meta)",
     via_peft_model=True, perturb="always")
case("frod_gpt2conv", S.gpt2conv_spec,
     [("default", peft.FrodConfig(target_modules=["c_fc", "c_proj"], fan_in_fan_out=True, save_projection=False,
                                  sparse_rate=0.2, progressbar=False))],
     "FRoD on GPT-2 Conv1D (fan_in_fan_out) with save_projection=False: the bases are recomputed from the base "
     "weights on load; default init then perturbed; via get_peft_model (see meta)",
     via_peft_model=True, perturb="always")
