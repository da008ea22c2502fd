# PVeRA (probabilistic VeRA): VeRA's frozen random projections shared by all layers of an adapter (pvera_A has 2r
# rows: the mean and the log-variance halves) and per-layer trained vectors (lambda_d has 2r entries). In train mode
# (or with sample_at_inference) the mean is perturbed by noise; every output here is eval mode with
# sample_at_inference=False, i.e. the mean. Python keeps pvera_A / pvera_B on the tuner: inject_adapter_in_model
# loses them for get_peft_model_state_dict, so the cases go through get_peft_model. A second adapter added there
# takes the first adapter's projections: the cases give it the same r and the same largest in / out features. generator_seed
# is left unset: Python's layers then hold a torch.Generator, which copy.deepcopy (the generator's merge step) cannot copy.

case("pvera_mlp", S.mlp_spec,
     [("default", peft.PveraConfig(r=4, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.PveraConfig(r=4, target_modules=["lin1", "lin2"], pvera_dropout=0.1, d_initial=0.3))],
     "PVeRA with save_projection=True (shared pvera_A 2r x in / pvera_B out x r) and a second adapter "
     "(init_weights=True, then perturbed); via get_peft_model (see meta)",
     via_peft_model=True)
case("pvera_gpt2conv", S.gpt2conv_spec,
     [("default", peft.PveraConfig(r=8, projection_prng_key=11, fan_in_fan_out=True, init_weights=False,
                                   bias="pvera_only", target_modules=["c_fc", "c_proj"]))],
     "PVeRA on GPT-2 Conv1D (fan_in_fan_out), another projection key, bias='pvera_only'; via get_peft_model (see meta)",
     via_peft_model=True)
case("pvera_blocks_layers", lambda: S.blocks_spec(root="encoder"),
     [("default", peft.PveraConfig(r=3, save_projection=False, projection_prng_key=5, init_weights=False,
                                   target_modules=["fc1", "fc2"], layers_to_transform=[1, 3], layers_pattern="blocks"))],
     "PVeRA on blocks 1 and 3 only (layers_to_transform), save_projection=False (projections regenerated from "
     "the key, not in the checkpoint); via get_peft_model (see meta)", via_peft_model=True)
