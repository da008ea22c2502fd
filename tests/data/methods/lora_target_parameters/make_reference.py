"""Reference for tests/methods/lora_target_parameters.cpp: LoRA on nn.Parameters (LoraConfig(target_parameters=...),
Python PEFT's lora.ParamWrapper).

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/lora_target_parameters/make_reference.py

Model (weights in base.safetensors), x in input.safetensors (5 x 8):
    h = relu(lin0(x)); h = gate(h) (h @ gate.weight.T, a module holding a 2-D parameter);
    h = h + experts(h) (a mixture of 3 experts stored as 3-D parameters gate_up_proj (3, 8, 12) and down_proj (3, 6, 8):
        u = einsum("bh,ehk->ebk", h, gate_up_proj); a, b = u.chunk(2, -1); y = einsum("ebi,eih->bh", silu(a) * b, down_proj));
    y = lin1(h), Linear(8, 3).
Each case: torch.manual_seed(7), get_peft_model(base, LoraConfig(**case, init_lora_weights=False)) (lora_B is not zero),
and, for "two_adapters", add_adapter("other", same targets, r=2) after torch.manual_seed(8). Written in <case>/:
    adapter/                save_pretrained (adapter_config.json, adapter_model.safetensors; "other/" for the second)
    reference.safetensors
        "active", "disabled": outputs on x (eval) with the adapter and inside disable_adapter()
        "other":            (two_adapters) output with set_adapter("other")
        "merged":           output of merge_and_unload() (of the first adapter)
        "merged.<param>":   the targeted base parameters after merge_and_unload()
    keys.json               the PEFT model's state-dict keys (Python's names, for the record)
"""

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8) * 0.3)

    def forward(self, x):
        return x @ self.weight.t()


class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(3, 8, 12) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(3, 6, 8) * 0.3)

    def forward(self, x):
        u = torch.einsum("bh,ehk->ebk", x, self.gate_up_proj)
        a, b = u.chunk(2, dim=-1)
        return torch.einsum("ebi,eih->bh", F.silu(a) * b, self.down_proj)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(8, 8)
        self.gate = Gate()
        self.experts = Experts()
        self.lin1 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.gate(torch.relu(self.lin0(x)))
        h = h + self.experts(h)
        return self.lin1(h)


def base_model():
    torch.manual_seed(0)
    return Net().eval()


base_state = {k: v.contiguous() for k, v in base_model().state_dict().items()}
save_file(base_state, "base.safetensors", metadata={"format": "pt"})
x = torch.randn(5, 8, generator=torch.Generator().manual_seed(42))
save_file({"x": x}, "input.safetensors", metadata={"format": "pt"})

NESTED = dict(target_modules=[], target_parameters=["experts.gate_up_proj", "experts.down_proj"], r=4, lora_alpha=8)
CASES = {
    # Two 3-D parameters of one module: nested wrappers (down_proj outside, gate_up_proj under base_layer).
    "nested": NESTED,
    # A module target beside parameter targets, a rank pattern on a parameter's name, rslora.
    "mixed": dict(target_modules=["lin0"], target_parameters=["gate.weight", "experts.down_proj"], r=4, lora_alpha=6,
                  rank_pattern={"down_proj": 2}, use_rslora=True),
    # A torch.nn.Linear's weight as a parameter target.
    "linear_weight": dict(target_parameters=["lin1.weight"], target_modules=[], r=2, lora_alpha=4),
    # A second adapter on the same parameters.
    "two_adapters": NESTED,
}

for case, kwargs in CASES.items():
    os.makedirs(case, exist_ok=True)
    torch.manual_seed(7)
    model = get_peft_model(base_model(), LoraConfig(init_lora_weights=False, **kwargs)).eval()
    out = {}
    if case == "two_adapters":
        torch.manual_seed(8)
        model.add_adapter("other", LoraConfig(init_lora_weights=False, **dict(NESTED, r=2, lora_alpha=3)))
        model.set_adapter("other")
        with torch.no_grad():
            out["other"] = model(x)
        model.set_adapter("default")
    with torch.no_grad():
        out["active"] = model(x)
        with model.disable_adapter():
            out["disabled"] = model(x)
    model.save_pretrained(os.path.join(case, "adapter"), selected_adapters=None)
    with open(os.path.join(case, "keys.json"), "w") as f:
        json.dump(list(model.state_dict().keys()), f, indent=1)
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        out["merged"] = merged(x)
    for key in kwargs["target_parameters"]:
        out["merged." + key] = merged.get_parameter(key).detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(case, "reference.safetensors"),
              metadata={"format": "pt"})
    print(case, "ok")
