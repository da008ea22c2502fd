# AdaMSS (adaptive multi-subspaces): newB (r, in [+1 for the bias]) = top right singular vectors of [W | b]
# (torch.svd_lowrank seeded with random_seed), the rows of the left singular vectors clustered by sklearn's
# KMeans (random init, seed 123456789, 10 iterations) into num_subspaces groups of output rows; each group has a
# trained A_i (rank_i, r) and B_i (rows_i, rank_i), and its outputs are scattered back to the group's rows.
# Made with Debian's python3-sklearn 1.2.1 (KMeans' random init draws numpy's RandomState.permutation).

def mlp_nobias_spec():
    """S.mlp_spec with a bias-less lin1."""
    spec = S.mlp_spec()
    spec["modules"][2] = S.L("lin1", 20, 20, bias=False)
    return spec


case("adamss_mlp", S.mlp_spec,
     [("default", peft.AdamssConfig(r=8, num_subspaces=3, subspace_rank=2, target_modules=["lin0", "lin1"])),
      ("other", peft.AdamssConfig(r=5, num_subspaces=6, subspace_rank=3, use_dynamic_rank=True, svd_threshold=0.3,
                                  random_seed=3, target_modules=["lin1", "lin2"]))],
     "AdaMSS on the MLP: default orthogonal init (B zero, perturbed); a second adapter with dynamic ranks, another "
     "seed, and 6 subspaces clamped to lin2's 4 output rows",
     perturb="always")
case("adamss_nobias_random", mlp_nobias_spec,
     [("default", peft.AdamssConfig(r=12, num_subspaces=4, subspace_rank=3, init_weights=None, use_asa=True,
                                    asa_target_subspaces=5, init_warmup=2, final_warmup=9, mask_interval=3,
                                    asa_importance_beta=0.7, asa_uncertainty_beta=0.8, asa_schedule_exponent=2.0,
                                    target_modules=["lin0", "lin1"]))],
     "AdaMSS with init_weights=None (random B), a bias-less lin1, r above lin0's 11 columns (clamped), ASA options "
     "(training-time only)")
