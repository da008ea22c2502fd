"""Reference for tests/methods/arrow.cpp: LoRA's Arrow routing and GenKnowSub (Python PEFT's create_arrow_model,
ArrowLoraLinearLayer) on a small MLP.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/arrow/make_reference.py

Model (weights in base.safetensors): y = lin2(relu(lin1(relu(lin0(x))))), Linear(10, 20), Linear(20, 20),
Linear(20, 4); x in input.safetensors, (2, 3, 10): every token is routed on its own.
Adapters (save_pretrained dirs): task_<i>/ (i = 0..3) and general_<j>/ (j = 0, 1), LoRA r=4 on lin0 and lin1,
init_lora_weights=False (random, non-zero; each with its own seed) and each its own lora_alpha (scaling matters).
Each case (<case>/):
    create_arrow_model(base, [task_0, task_1, task_2], ArrowConfig(top_k=2, router_temperature=0.7, rng_seed=11,
                       use_gks=<case>), general_adapter_paths=[general_0, general_1])
    output.safetensors        "output": the model's output on x (first forward: GenKnowSub, prototypes)
                              "task.<key>": get_peft_model_state_dict of each task adapter after it (GenKnowSub
                              subtracts the general adapters' mean from them in place)
    model.load_adapter(task_3, "task_3")  (a new expert: prototypes rebuilt, GenKnowSub on it alone)
                              "output_added": the output then
    router/adapter_config.json  the arrow_router adapter's config as save_pretrained writes it
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from peft import ArrowConfig, LoraConfig, create_arrow_model, get_peft_model, get_peft_model_state_dict

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


ADAPTERS = {  # name: (seed, lora_alpha)
    "task_0": (1, 8),
    "task_1": (2, 16),
    "task_2": (3, 4),
    "task_3": (4, 8),
    "general_0": (5, 8),
    "general_1": (6, 12),
}

save_file({k: v.contiguous() for k, v in base_model().state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
x = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(42))
save_file({"x": x}, "input.safetensors", metadata={"format": "pt"})

for name, (seed, alpha) in ADAPTERS.items():
    shutil.rmtree(name, ignore_errors=True)
    base = base_model()
    torch.manual_seed(seed)  # after base_model(), which seeds 0
    config = LoraConfig(r=4, lora_alpha=alpha, target_modules=["lin0", "lin1"], init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(name)
    os.remove(f"{name}/README.md")  # the model card is not needed

CASES = {"arrow": False, "arrow_gks": True}
for case, use_gks in CASES.items():
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(case)
    arrow_config = ArrowConfig(top_k=2, router_temperature=0.7, rng_seed=11, use_gks=use_gks)
    model = create_arrow_model(
        base_model(), ["task_0", "task_1", "task_2"], arrow_config, general_adapter_paths=["general_0", "general_1"]
    )
    model.eval()
    with torch.no_grad():
        out = {"output": model(x)}
    for i in range(3):
        for key, value in get_peft_model_state_dict(model, adapter_name=f"task_{i}").items():
            out[f"task_{i}.{key}"] = value.contiguous()
    model.load_adapter("task_3", adapter_name="task_3")
    model.set_adapter("arrow_router")
    with torch.no_grad():
        out["output_added"] = model(x)
    save_file(out, f"{case}/output.safetensors", metadata={"format": "pt"})
    model.save_pretrained(f"{case}/saved", selected_adapters=["arrow_router"])
    os.makedirs(f"{case}/router")
    shutil.move(f"{case}/saved/arrow_router/adapter_config.json", f"{case}/router/adapter_config.json")
    shutil.rmtree(f"{case}/saved")
    print(case, "max |output - base output| per sample", (out["output"] - base_model()(x)).abs().amax(dim=(1, 2)).tolist())
