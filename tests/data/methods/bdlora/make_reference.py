"""Reference for tests/methods/bdlora.cpp: BD-LoRA (LoraConfig(use_bdlora=BdLoraConfig(...)), Python PEFT).

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/bdlora/make_reference.py

Model (weights in base.safetensors): y = lin2(relu(lin1(relu(lin0(x))))), Linear(10, 20), Linear(20, 20),
Linear(20, 4); x in input.safetensors. Each case: torch.manual_seed(7), get_peft_model(base, LoraConfig(r=4,
lora_alpha=8, target_modules=["lin0", "lin1", "lin2"], use_bdlora=<case>)), then every adapter tensor p gets
p += 0.1 * randn (a generator seeded 11, in named_parameters order) so that lora_B is not zero. Written in <case>/:
    adapter/             save_pretrained of the perturbed adapter (adapter_config.json, adapter_model.safetensors)
    reference.safetensors
        "init.<key>":    get_peft_model_state_dict right after get_peft_model (the seed's initialisation)
        "active", "disabled", "merged":  outputs on x (eval): with the adapter, inside disable_adapter(), after
                         merge_adapter(); "unmerged" after unmerge_adapter()
        "merged.<name>.weight": the base weights while merged
        "grad.<key>":    gradient of sum(model(x) ** 2) (train mode) wrt each adapter tensor, keys of the state dict
"""

import os

import torch
from safetensors.torch import save_file
from torch import nn

from peft import BdLoraConfig, LoraConfig, get_peft_model, get_peft_model_state_dict

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 20)
        self.lin2 = nn.Linear(20, 4)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


def base_model():
    torch.manual_seed(0)
    return MLP().eval()


save_file({k: v.contiguous() for k, v in base_model().state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
x = torch.randn(3, 10, generator=torch.Generator().manual_seed(42))
save_file({"x": x}, "input.safetensors", metadata={"format": "pt"})

CASES = {
    # LoRA-A block-diagonal everywhere (10, 20, 20 input features, r=4: 2 blocks).
    "bd_a": dict(use_bdlora=BdLoraConfig(target_modules_bd_a=["lin0", "lin1", "lin2"], nblocks=2)),
    # LoRA-B block-diagonal everywhere, 4 blocks (r=4, 20, 20, 4 output features); rslora.
    "bd_b": dict(use_bdlora=BdLoraConfig(target_modules_bd_b=["lin"], nblocks=4), use_rslora=True),
    # Both kinds chosen by patterns ("lin0" and "lin1" for A, "2" for B), with a rank pattern.
    "both": dict(use_bdlora=BdLoraConfig(target_modules_bd_a=["lin0", "lin1"], target_modules_bd_b=["2"], nblocks=2),
                 rank_pattern={"lin1": 6}, alpha_pattern={"lin2": 4}),
    # match_strict=False: lin1 and lin2 stay plain LoRA; lora_bias (Python keeps lora_B's bias on a LoRA-A
    # block-diagonal layer; on a LoRA-B one its BlockDiagonalLinear has no bias and merging fails).
    "mixed": dict(use_bdlora=BdLoraConfig(target_modules_bd_a=["lin0"], nblocks=2, match_strict=False), lora_bias=True),
}

for name, extra in CASES.items():
    os.makedirs(name, exist_ok=True)
    base = base_model()
    torch.manual_seed(7)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1", "lin2"], **extra)
    model = get_peft_model(base, config).eval()
    tensors = {"init." + k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p += 0.1 * torch.randn(p.shape, generator=gen)
    model.save_pretrained(os.path.join(name, "adapter"))
    os.remove(os.path.join(name, "adapter", "README.md"))  # the model card: not needed
    with torch.no_grad():
        tensors["active"] = model(x)
        with model.disable_adapter():
            tensors["disabled"] = model(x)
        model.merge_adapter()
        tensors["merged"] = model(x)
        for lin in ["lin0", "lin1", "lin2"]:
            weight = getattr(model.base_model.model, lin).base_layer.weight
            tensors[f"merged.{lin}.weight"] = weight.detach().clone().contiguous()
        model.unmerge_adapter()
        tensors["unmerged"] = model(x)
    model.train()
    model.zero_grad()
    (model(x) ** 2).sum().backward()
    state = get_peft_model_state_dict(model)
    params = dict(model.named_parameters())
    for key in state:
        # state-dict key base_model.model.lin0.lora_A.weight -> parameter base_model.model.lin0.lora_A.default.weight
        parts = key.split(".")
        pname = ".".join(parts[:-1] + ["default", parts[-1]])
        tensors["grad." + key] = params[pname].grad.detach().clone().contiguous()
    save_file(tensors, os.path.join(name, "reference.safetensors"), metadata={"format": "pt"})
    print(name, "ok", {k: tuple(v.shape) for k, v in state.items()})
