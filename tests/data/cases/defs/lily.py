# Lily cases on the block model (4 blocks of norm, fc1, fc2): layers of a group share lily_A (stride_A
# consecutive ones) and lily_B (all), so loading, saving and the outputs go through real sharing.
case("lily_blocks_shared", S.blocks_spec,
     [("default", peft.LilyConfig(r=2, stride_A=2, num_B=3, target_modules=["fc1", "fc2"], init_weights=False)),
      ("other", peft.LilyConfig(r=3, num_B=2, scaling=0.5, target_modules=["fc2"], init_weights=False))],
     "Lily on 4 blocks, stride_A=2, num_B=3; second adapter on fc2 only")
case("lily_blocks_regex", S.blocks_spec,
     [("default", peft.LilyConfig(r=2, stride_A=3, num_B=2, target_modules=r"blocks\.\d+\.fc[12]", init_weights=False))],
     "Lily with a regex target: one group per weight shape, stride_A=3")
