"""Reference for tests/methods/lora_layer_replication.cpp: LoRA's layer_replication (Python PEFT's replicate_layers).

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/lora_layer_replication/make_reference.py

Model (weights in base.safetensors), llama-like: model.layers is a ModuleList of 3 blocks, each
    x + mlp.down(relu(mlp.up(tanh(q_proj(x) * scale + v_proj(x)))))   (q_proj, v_proj: Linear(8, 8); up: Linear(8, 16);
                                                                       down: Linear(16, 8); scale: a buffer of 8)
then lm_head: Linear(8, 4). x (2 x 8) in input.safetensors.
torch.manual_seed(7), then get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
layer_replication=[[0, 2], [1, 3]], init_lora_weights=False)): the layers become [0, 1, 1, 2] (base weights shared).
Written:
    adapter/                 save_pretrained (adapter_config.json, adapter_model.safetensors)
    output.safetensors       "active": output (eval), "disabled": with disable_adapter(), "grad.<key>": gradients
                             of the adapter's tensors for output.sum() (train mode, no dropout)
    keys.json                "replicated": state_dict keys of the unloaded model (the replicated base model),
                             "shared": pairs of those keys whose tensors are the same Parameter
"""

import json
import os
import shutil
import types

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)
        self.mlp = Mlp()
        self.register_buffer("scale", torch.rand(8) + 0.5)

    def forward(self, x):
        return x + self.mlp(torch.tanh(self.q_proj(x) * self.scale + self.v_proj(x)))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block() for _ in range(3)])
        # replicate_layers updates config.num_hidden_layers (transformers models have a config).
        self.config = types.SimpleNamespace(num_hidden_layers=3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()
        self.lm_head = nn.Linear(8, 4)

    def forward(self, x):
        return self.lm_head(self.model(x))


def base_model():
    torch.manual_seed(0)
    return Model().eval()


save_file({k: v.contiguous() for k, v in base_model().state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
x = torch.randn(2, 8, generator=torch.Generator().manual_seed(42))
save_file({"x": x}, "input.safetensors", metadata={"format": "pt"})

torch.manual_seed(7)
config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], layer_replication=[[0, 2], [1, 3]],
                    init_lora_weights=False)
model = get_peft_model(base_model(), config).eval()
tensors = {}
with torch.no_grad():
    tensors["active"] = model(x)
    with model.disable_adapter():
        tensors["disabled"] = model(x)
model.train()
model(x).sum().backward()
for name, param in model.named_parameters():
    if "lora_" in name:
        tensors["grad." + name.removeprefix("base_model.model.").replace(".default", "")] = param.grad.detach().clone()
model.zero_grad()
model.eval()
save_file(tensors, "output.safetensors", metadata={"format": "pt"})

shutil.rmtree("adapter", ignore_errors=True)
model.save_pretrained("adapter")
os.remove("adapter/README.md")  # the model card is not compared

unloaded = model.unload()
state = unloaded.state_dict(keep_vars=True)
shared = [[a, b] for i, a in enumerate(state) for b in list(state)[i + 1:]
          if isinstance(state[a], nn.Parameter) and state[a] is state[b]]
with open("keys.json", "w") as f:
    json.dump({"replicated": list(state), "shared": shared}, f, indent=1)
    f.write("\n")
print(len(state), "keys,", len(shared), "shared pairs")
