# PSOFT: frozen SVD factors A (r, in), B (out, r) of the weight's top-r subspace (non-persistent buffers) and a
# trained r x r R between them; the update is (psoft_alpha / r) B (R - I) A. Perturbed so that the scaling
# vectors (initialised to ones) are non-trivial too.

case("psoft_mlp", S.mlp_spec,
     [("default", peft.PsoftConfig(r=4, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.PsoftConfig(r=3, psoft_alpha=6, ab_svd_init="pissa_init", psoft_orth=False, psoft_mag_a=False,
                                 target_modules=["lin1", "lin2"], init_weights=False))],
     "PSOFT Cayley R with both scaling vectors (psoft_init) and a second adapter with pissa_init, a free R and "
     "only vector_b",
     perturb="always")
case("psoft_cayley_neumann", S.mlp_spec,
     [("default", peft.PsoftConfig(r=4, use_cayley_neumann=True, num_cayley_neumann_terms=6, cayley_neumann_eps=0.3,
                                   psoft_mag_b=False, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.PsoftConfig(r=2, psoft_alpha=5, use_cayley_neumann=True, num_cayley_neumann_terms=2,
                                 target_modules=["lin2"], init_weights=False))],
     "Cayley-Neumann R (6 terms, Q rescaled to Frobenius norm 0.3; and 2 terms without eps)",
     perturb="always")
case("psoft_lowrank", S.mlp_spec,
     [("default", peft.PsoftConfig(r=3, psoft_svd="lowrank", psoft_svd_lowrank_niter=2, random_seed=7,
                                   fan_in_fan_out=True, target_modules="all-linear", exclude_modules=["lin2"]))],
     "torch.svd_lowrank factors (niter 2, random_seed 7), default init (identity R, perturbed); fan_in_fan_out "
     "reset to False for Linear with a warning; all-linear minus exclude_modules")
