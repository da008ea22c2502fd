# BEFT (bias-only fine-tuning): a learned (1, out) bias offset added to each targeted Linear's output.

def mlp_nobias_spec():
    """S.mlp_spec with a bias-less lin1."""
    spec = S.mlp_spec()
    spec["modules"][2] = S.L("lin1", 20, 20, bias=False)
    return spec


case("beft_mlp", S.mlp_spec,
     [("default", peft.BeftConfig(target_modules=["lin0", "lin1"])),
      ("other", peft.BeftConfig(target_modules=["lin1", "lin2"], init_weights=False))],
     "BEFT on the MLP: default zero init (perturbed), second adapter random init on lin1/lin2")
case("beft_mlp_nobias", mlp_nobias_spec,
     [("default", peft.BeftConfig(target_modules=["lin0", "lin1"], init_weights=False))],
     "BEFT with a bias-less lin1: the forward adds the offset, merging is refused (no bias)")
