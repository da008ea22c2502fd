"""Reference for tests/methods/adamss.cpp: AdaMSS's Adaptive Subspace Allocation (AdamssModel.update_and_allocate,
what AdamssAsaCallback calls after each optimizer step) run by Python PEFT for a few steps.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0 at commit
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, torch 1.13.1 CPU, float32, one thread, Debian's python3-sklearn 1.2.1):

    . /work/ref/env.sh && PYTHONHASHSEED=0 PYTHONPATH=$PYTHONPATH:/work/ref/scripts \
        $PY tests/data/methods/adamss/make_reference.py

Start: the case tests/data/cases/adamss_nobias_random (use_asa, asa_target_subspaces 5, init_warmup 2,
final_warmup 9, mask_interval 3, betas 0.7 / 0.8, exponent 2; 4 subspaces on each of lin0, lin1), its adapter
loaded for training (get_peft_model + set_peft_model_state_dict). Each step s = 0 .. 11: loss = sum(y * w) with
w = linspace(-1, 1) over the output, backward, plain SGD (p -= 0.5 * grad) on the tensors that have a gradient,
model.base_model.update_and_allocate(s), gradients cleared. It writes, next to itself:
  reference.json         per step, the trainable adapter tensors (state-dict names) after update_and_allocate.
  reference.safetensors  the adapter tensors after the last step (get_peft_model_state_dict, keys without
                         "base_model.model.").
"""

import json
import os

import torch
from safetensors.torch import load_file, save_file

import specmodel as S
from peft import AdamssConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
CASE = os.path.join(HERE, "..", "..", "cases", "adamss_nobias_random")
STEPS = 12
LR = 0.5

with open(os.path.join(CASE, "model.json")) as f:
    spec = json.load(f)
base = S.build(spec)
base.load_state_dict(load_file(os.path.join(CASE, "base.safetensors")))
config = AdamssConfig.from_pretrained(CASE)
config.inference_mode = False
model = get_peft_model(base, config)
set_peft_model_state_dict(model, load_file(os.path.join(CASE, "adapter_model.safetensors")))
x = load_file(os.path.join(CASE, "input.safetensors"))["x"]

steps = []
for step in range(STEPS):
    y = model(x)
    w = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * w).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= LR * p.grad
    model.base_model.update_and_allocate(step)
    trainable = sorted(n[len("base_model.model."):] for n, p in model.named_parameters() if p.requires_grad)
    steps.append({"step": step, "trainable": trainable})
    for p in model.parameters():
        p.grad = None

with open(os.path.join(HERE, "reference.json"), "w") as f:
    json.dump({"steps": steps, "lr": LR}, f, indent=1)
prefix = "base_model.model."
save_file({k[len(prefix):]: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()},
          os.path.join(HERE, "reference.safetensors"), metadata={"format": "pt"})
