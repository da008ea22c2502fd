# OSF: the weight is split by its SVD; the top effective_rank directions are frozen (non-persistent buffers),
# the rest (U_low, S_low, V_low) is trained. OSF starts as a no-op (the split rebuilds W), so every case is
# perturbed.

case("osf_mlp", S.mlp_spec,
     [("default", peft.OSFConfig(target_modules=["lin0", "lin1"])),
      ("other", peft.OSFConfig(target_modules=["lin1", "lin2"], effective_rank=0.25, rank_pattern={"in2": 3}))],
     "OSF with the default rank (half the smaller dimension) and a second adapter with a fractional rank "
     "(0.25) and a rank_pattern key found by re.search inside the name ('in2' -> lin2)",
     perturb="always")
case("osf_all_linear", S.mlp_spec,
     [("default", peft.OSFConfig(effective_rank=3, rank_pattern={"lin0": 7.9, "lin1": 1.0}, init_weights=True,
                                 target_svd_config={"lin0.weight": 8}))],
     "target_modules unset -> all-linear; int rank 3 (lin2), a float above 1 truncated (7.9 -> 7, lin0), 1.0 = the "
     "full rank (lin1: nothing trainable, empty low factors); init_weights and target_svd_config accepted, unused",
     perturb="always")
