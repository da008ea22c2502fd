"""Reference for tests/methods/lily.cpp: how Python PEFT shares Lily's lily_A / lily_B between layers.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0 at commit
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, torch 1.13.1 CPU, float32, one thread):

    . /work/ref/env.sh && cd tests/data/methods/lily && PYTHONHASHSEED=0 $PY make_reference.py

It writes, next to itself:
  reference.safetensors  "base.<param>": the base model (torch.manual_seed(0)); "input": x (2, 3, 8) from
                         torch.Generator().manual_seed(42); per scenario "<scenario>.<key>": the adapter's
                         get_peft_model_state_dict right after injection (torch.manual_seed(seed) just before it)
                         and "<scenario>.output": the model output with that adapter alone active (eval mode).
  reference.json         per scenario: the config, the seed, and `shared`: the state-dict keys grouped by the
                         tensor they point to (Python's data_ptr), sorted.

The model: 4 blocks of fc1, fc2 (both Linear(8, 8)), h = h + fc2(relu(fc1(h))), then head.fc1 = Linear(8, 4).
Scenarios:
  suffixes      target_modules ["fc1", "fc2"], stride_A 2, num_B 3: groups by suffix and shape.
  regex         a regex target (one group per shape, fc1 and fc2 interleaved), stride_A 3, scaling 0.5.
  state_dict    injected from the `suffixes` state dict with target_modules ["fc1"]: the fc2 layers match no
                entry and share nothing; then loaded (set_peft_model_state_dict).
  low_cpu       the same state dict injected with low_cpu_mem_usage=True and loaded with it: what still shares.
  second        a second adapter "other" (target_modules ["fc2"], r 3) injected into the `suffixes` model.
"""

import json
import os

import torch
from torch import nn
from safetensors.torch import save_file

import peft
from peft import LilyConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lily.layer import LilyLayer

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, h):
        return h + self.fc2(torch.relu(self.fc1(h)))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 4)

    def forward(self, h):
        return self.fc1(h)


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(4)])
        self.head = Head()

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def base_model():
    torch.manual_seed(0)
    model = Stack()
    model.eval()
    return model


def shared_groups(state_dict):
    groups = {}
    for key, tensor in state_dict.items():
        groups.setdefault(tensor.data_ptr(), []).append(key)
    return sorted(sorted(keys) for keys in groups.values())


def only_active(model, adapter):
    for module in model.modules():
        if isinstance(module, LilyLayer):
            module.set_adapter(adapter)


tensors, meta = {}, {"peft_version": peft.__version__, "torch_version": torch.__version__, "scenarios": {}}
x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(42))
for key, value in base_model().state_dict().items():
    tensors["base." + key] = value
tensors["input"] = x


def record(name, model, adapter, config, seed):
    sd = get_peft_model_state_dict(model, adapter_name=adapter)
    only_active(model, adapter)
    with torch.no_grad():
        tensors[name + ".output"] = model(x)
    for key, value in sd.items():
        tensors[name + "." + key] = value.detach().clone()
    entry = {k: v for k, v in config.to_dict().items() if k in ("r", "stride_A", "num_B", "scaling", "init_weights")}
    tm = config.target_modules
    entry["target_modules"] = tm if isinstance(tm, str) else sorted(tm)
    meta["scenarios"][name] = {"adapter": adapter, "seed": seed, "config": entry, "shared": shared_groups(sd)}
    return sd


# suffixes
model = base_model()
torch.manual_seed(1)
cfg = LilyConfig(r=2, stride_A=2, num_B=3, target_modules=["fc1", "fc2"], init_weights=False)
model = inject_adapter_in_model(cfg, model)
model.eval()
suffix_sd = {k: v.detach().clone() for k, v in record("suffixes", model, "default", cfg, 1).items()}

# second adapter on the same model
torch.manual_seed(3)
cfg2 = LilyConfig(r=3, stride_A=1, num_B=2, target_modules=["fc2"], init_weights=False)
model = inject_adapter_in_model(cfg2, model, adapter_name="other")
model.eval()
record("second", model, "other", cfg2, 3)

# regex
model = base_model()
torch.manual_seed(2)
cfg = LilyConfig(r=2, stride_A=3, num_B=2, scaling=0.5, target_modules=r"(blocks\.\d+|head)\.fc[12]",
                 init_weights=False)
model = inject_adapter_in_model(cfg, model)
model.eval()
record("regex", model, "default", cfg, 2)

# state_dict (and low_cpu): layers found from the keys, grouped by the config's target_modules
for name, low_cpu in (("state_dict", False), ("low_cpu", True)):
    model = base_model()
    cfg = LilyConfig(r=2, stride_A=2, num_B=3, target_modules=["fc1"], init_weights=False)
    torch.manual_seed(4)
    model = inject_adapter_in_model(cfg, model, state_dict=suffix_sd, low_cpu_mem_usage=low_cpu)
    set_peft_model_state_dict(model, suffix_sd, low_cpu_mem_usage=low_cpu)
    model.eval()
    record(name, model, "default", cfg, 4)

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(HERE, "reference.safetensors"))
with open(os.path.join(HERE, "reference.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")
