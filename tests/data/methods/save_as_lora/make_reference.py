"""Reference for tests/methods/save_as_lora.cpp: PeftModel.save_pretrained(path_initial_model_for_weight_conversion=...)
(Python PEFT's PiSSA / OLoRA -> LoRA conversion, LoraModel.subtract_mutated_init), on a small MLP.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/save_as_lora/make_reference.py

Model (weights in base.safetensors): y = lin2(relu(lin1(relu(lin0(x))))), Linear(10, 20), Linear(20, 20),
Linear(20, 4); x in input.safetensors.
Each case (<case>/), the workflow of PEFT's PiSSA example:
    get_peft_model(base, config)                     PiSSA / OLoRA init (base weights become W_res)
    config.init_lora_weights = True; save_pretrained("<case>/initial")
    "training": every lora_A / lora_B += 0.05 * randn (torch.manual_seed(1))
    trained.safetensors       get_peft_model_state_dict of the trained adapter (PiSSA form, Python's keys)
    output_trained.safetensors  the trained model's output
    save_pretrained("<case>/converted", path_initial_model_for_weight_conversion="<case>/initial")
                              a plain LoRA of rank 2r: converted/adapter_model.safetensors, converted/adapter_config.json;
                              Python also rewrites initial/adapter_config.json (kept as it leaves it)
    output_converted.safetensors  the ORIGINAL base + converted/ (PeftModel.from_pretrained): equals output_trained
case.json: the config and the check max|output_converted - output_trained|.
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

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


CASES = {
    "pissa": dict(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=["lin0", "lin1"]),
    "olora_rslora": dict(r=4, lora_alpha=8, use_rslora=True, init_lora_weights="olora", target_modules=["lin0", "lin1"]),
    "pissa_patterns": dict(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=["lin0", "lin1", "lin2"],
                           rank_pattern={"lin1": 2}, alpha_pattern={"lin1": 3}),
}

save_file({k: v.contiguous() for k, v in base_model().state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
x = torch.randn(3, 10, generator=torch.Generator().manual_seed(42))
save_file({"x": x}, "input.safetensors", metadata={"format": "pt"})

for name, kwargs in CASES.items():
    shutil.rmtree(name, ignore_errors=True)
    os.makedirs(name)
    model = get_peft_model(base_model(), LoraConfig(**kwargs))
    model.eval()
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(f"{name}/initial")
    torch.manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname or "lora_B" in pname:
                p.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        trained_out = model(x)
    trained = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(trained, f"{name}/trained.safetensors", metadata={"format": "pt"})
    save_file({"output": trained_out}, f"{name}/output_trained.safetensors", metadata={"format": "pt"})
    model.save_pretrained(f"{name}/converted", path_initial_model_for_weight_conversion=f"{name}/initial")
    converted = PeftModel.from_pretrained(base_model(), f"{name}/converted").eval()
    with torch.no_grad():
        converted_out = converted(x)
    save_file({"output": converted_out}, f"{name}/output_converted.safetensors", metadata={"format": "pt"})
    diff = (converted_out - trained_out).abs().max().item()
    assert diff < 1e-5, (name, diff)
    with open(f"{name}/case.json", "w") as f:
        json.dump({"config": kwargs, "max_diff_converted_vs_trained": diff}, f, indent=2, sort_keys=True)
    print(name, "ok", diff)
