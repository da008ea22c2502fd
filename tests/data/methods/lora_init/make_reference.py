"""Reference for tests/methods/lora_init.cpp: LoRA's init_lora_weights methods (Python PEFT) from a seed.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/lora_init/make_reference.py

Model (weights in base.safetensors): y = lin2(relu(lin1(relu(lin0(x))))), Linear(10, 20), Linear(20, 20),
Linear(20, 4); x in input.safetensors. Each case: torch.manual_seed(7), then get_peft_model(base, LoraConfig(r=4,
lora_alpha=8, target_modules=["lin0", "lin1", "lin2"], init_lora_weights=<case>)); written:
    <case>.safetensors   "adapter.<key>": get_peft_model_state_dict (the initialised adapter),
                         "base.<name>": the model's base weights after the init (PiSSA and OLoRA change them),
                         "output": the model's output on x (eval)
"""

import os

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

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

for init in ["pissa", "pissa_niter_2", "pissa_niter_0", "olora", "gaussian", "orthogonal", "true", "mica"]:
    value = True if init == "true" else init
    base = base_model()
    torch.manual_seed(7)
    try:
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1", "lin2"],
                                                init_lora_weights=value)).eval()
    except Exception as e:  # an init this PEFT version lacks
        print(init, "skipped:", e)
        continue
    tensors = {"adapter." + k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    for name in ["lin0", "lin1", "lin2"]:
        tensors[f"base.{name}.weight"] = getattr(model.base_model.model, name).base_layer.weight.detach().contiguous()
    with torch.no_grad():
        tensors["output"] = model(x)
    if init == "mica":
        tensors["trainable"] = torch.tensor([p.requires_grad for n, p in model.named_parameters() if "lora_" in n])
    save_file(tensors, f"{init}.safetensors", metadata={"format": "pt"})
    print(init, "ok")
