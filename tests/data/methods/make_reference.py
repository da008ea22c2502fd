"""Reference files for tests/methods/vera.cpp and vblora.cpp, written by Python PEFT itself.

Run from the repository root with the reference environment: `. /work/ref/env.sh && $PY tests/data/methods/make_reference.py`

vera/projections_key123.safetensors
    vera_A / vera_B of a VeraConfig(r=4, projection_prng_key=123) adapter on a 16 -> 24 -> 16 MLP (lin0, lin1):
    what save_projection=false regenerates, for a key and layer sizes other than the vera_mlp vector's.
vblora/topk/
    The vblora_mlp vector's adapter saved by save_pretrained with save_only_topk_weights=True (top-k indices and
    weights instead of the logits).
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file

from peft import VBLoRAConfig, VeraConfig, get_peft_model, set_peft_model_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "vectors")


class Mlp(torch.nn.Module):
    def __init__(self, sizes):
        super().__init__()
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            setattr(self, f"lin{i}", torch.nn.Linear(n_in, n_out))

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


def vera_projections():
    model = get_peft_model(Mlp([16, 24, 16]), VeraConfig(r=4, projection_prng_key=123, target_modules=["lin0", "lin1"]))
    tensors = {"vera_A": model.base_model.vera_A["default"], "vera_B": model.base_model.vera_B["default"]}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(HERE, "vera", "projections_key123.safetensors"),
              metadata={"format": "pt"})


def vblora_topk():
    case = os.path.join(VECTORS, "vblora_mlp")
    config = json.load(open(os.path.join(case, "adapter_config.json")))
    fields = {k: config[k] for k in ("r", "num_vectors", "vector_length", "topk", "target_modules")}
    model = get_peft_model(Mlp([10, 20, 20, 4]), VBLoRAConfig(save_only_topk_weights=True, **fields))
    set_peft_model_state_dict(model, load_file(os.path.join(case, "adapter_model.safetensors")))
    model.save_pretrained(os.path.join(HERE, "vblora", "topk"))


if __name__ == "__main__":
    vera_projections()
    vblora_topk()
