"""Reference for tests/methods/alora.cpp: Activated LoRA (LoraConfig(alora_invocation_tokens=...)) in Python PEFT's
PeftModelForCausalLM, which computes the per-row `alora_offsets` from input_ids and hands them to every LoRA layer.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/alora/make_reference.py

The environment's `transformers` is a small shim without `transformers.modeling_layers`, which PEFT's
_enable_peft_forward_hooks imports (only to find gradient-checkpointing layers, which this model has none of): a
stand-in module with an empty GradientCheckpointingLayer class is registered before the first forward, so the offsets
reach the layers through PEFT's own pre-forward hooks, exactly as with a transformers model.

Model (weights in base.safetensors), a toy causal LM taking input_ids:
    logits = head(relu(proj(embed(input_ids))))     embed Embedding(16, 8), proj Linear(8, 8), head Linear(8, 16)
Adapters (LoRA r=4, lora_alpha=8 on proj and head; lora_B perturbed away from zero):
    "alora"  alora_invocation_tokens=[3, 4], task_type CAUSAL_LM
    "plain"  the same without invocation tokens (plain LoRA, for contrast and mixed batches)
Files:
    input.safetensors     input_ids (4, 7): the sequence at positions 1, 3 (twice: the last counts), absent (a lone 3
                          at the end), 5; loss_weight (4, 7, 16) for the loss sum(logits * loss_weight);
                          x2d (4, 8) and proj_2d_offsets for a direct call of proj with 2-D input (one token per row)
    offsets.json          Python's offsets: "active" (active adapter "alora"), "mixed" (adapter_names below)
    outputs.safetensors   alora (active, offsets from input_ids), disabled (disable_adapter()), no_offsets (the model
                          called without PeftModel's forward: alora_offsets None), plain (set_adapter("plain")),
                          mixed (adapter_names ["alora", "plain", "__base__", "alora"], active "alora"),
                          proj_2d (proj(x2d, alora_offsets=proj_2d_offsets)), proj_2d_none (no offsets)
    grads.safetensors     d loss / d lora_A, lora_B of proj and head for the "alora" forward (train mode, dropout 0),
                          keys as the model's parameters; *_none: the same without offsets (all zero, but defined)
    saved/alora/, saved/plain/  save_pretrained of the model (Python's adapter_config.json and safetensors;
                          the model card README.md it also writes is removed)
"""

import json
import os
import shutil
import sys
import types

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model
from peft.tuners.lora.variants import get_alora_offsets_for_forward

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)

# The stand-in for transformers.modeling_layers (see above).
_layers = types.ModuleType("transformers.modeling_layers")


class GradientCheckpointingLayer(nn.Module):
    pass


_layers.GradientCheckpointingLayer = GradientCheckpointingLayer
sys.modules["transformers.modeling_layers"] = _layers


class ToyConfig:
    model_type = "toy_alora"

    def to_dict(self):
        return {"model_type": self.model_type}

    def get(self, key, default=None):
        return getattr(self, key, default)


class ToyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = ToyConfig()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        return self.head(torch.relu(self.proj(self.embed(input_ids))))

    def prepare_inputs_for_generation(self, *args, **kwargs):
        return kwargs


def base_model():
    torch.manual_seed(0)
    return ToyLM().eval()


INVOCATION = [3, 4]
ALORA = dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["proj", "head"], alora_invocation_tokens=INVOCATION)
LORA = dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["proj", "head"])
NAMES = ["alora", "plain", "__base__", "alora"]

save_file({k: v.contiguous() for k, v in base_model().state_dict().items()}, "base.safetensors", metadata={"format": "pt"})

input_ids = torch.tensor([
    [1, 3, 4, 5, 6, 7, 2],
    [3, 4, 2, 3, 4, 9, 9],
    [1, 2, 5, 6, 7, 8, 3],
    [5, 6, 7, 8, 9, 3, 4],
])
g = torch.Generator().manual_seed(7)
loss_weight = torch.randn(4, 7, 16, generator=g)
x2d = torch.randn(4, 8, generator=g)
proj_2d_offsets = [None, 2, 1, 0]

model = get_peft_model(base_model(), LoraConfig(**ALORA), adapter_name="alora")
model.add_adapter("plain", LoraConfig(**LORA))
torch.manual_seed(1)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_A" in name:
            p.add_(0.3 * torch.randn_like(p))
model.set_adapter("alora")
model.eval()

offsets_active = get_alora_offsets_for_forward(model, input_ids)["alora_offsets"]
offsets_mixed = get_alora_offsets_for_forward(model, input_ids, adapter_names=NAMES)["alora_offsets"]
with open("offsets.json", "w") as f:
    json.dump({"invocation_tokens": INVOCATION, "active": offsets_active, "mixed_names": NAMES, "mixed": offsets_mixed},
              f, indent=2)
    f.write("\n")

outputs = {}
with torch.no_grad():
    outputs["alora"] = model(input_ids=input_ids)
    with model.disable_adapter():
        outputs["disabled"] = model(input_ids=input_ids)
    outputs["no_offsets"] = model.base_model(input_ids)
    outputs["mixed"] = model(input_ids=input_ids, adapter_names=NAMES)
    proj = model.base_model.model.proj
    outputs["proj_2d"] = proj(x2d, alora_offsets=proj_2d_offsets)
    outputs["proj_2d_none"] = proj(x2d)
    model.set_adapter("plain")
    outputs["plain"] = model(input_ids=input_ids)
    model.set_adapter("alora")

# The aLoRA adapter must have acted only on the activated tokens, and the rows without the sequence not at all.
delta = (outputs["alora"] - outputs["disabled"]).abs().amax(-1)
for row, offset in enumerate(offsets_active):
    active = torch.zeros(7, dtype=torch.bool)
    if offset is not None:
        active[7 - offset:] = True
    assert bool((delta[row][active] > 0).all()) and bool((delta[row][~active] == 0).all()), row
assert torch.equal(outputs["no_offsets"], outputs["disabled"])

grads = {}
model.train()
for suffix, call in (("", lambda: model(input_ids=input_ids)), ("_none", lambda: model.base_model(input_ids))):
    model.zero_grad(set_to_none=True)
    loss = (call() * loss_weight).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if ".alora." in name and p.grad is not None:
            grads[name.replace("base_model.model.", "") + suffix] = p.grad.detach().clone()
model.eval()

save_file({"input_ids": input_ids, "loss_weight": loss_weight, "x2d": x2d,
           "proj_2d_offsets": torch.tensor([-1 if o is None else o for o in proj_2d_offsets])},
          "input.safetensors", metadata={"format": "pt"})
save_file({k: v.contiguous() for k, v in outputs.items()}, "outputs.safetensors", metadata={"format": "pt"})
save_file(grads, "grads.safetensors", metadata={"format": "pt"})

shutil.rmtree("saved", ignore_errors=True)
model.save_pretrained("saved")
os.remove("saved/README.md")
print("offsets", offsets_active, offsets_mixed)
print("grads", sorted(grads))
