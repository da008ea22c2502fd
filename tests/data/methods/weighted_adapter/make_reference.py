"""Reference for tests/methods/weighted_adapter.cpp: LoraModel.add_weighted_adapter (Python PEFT) for every
combination_type, on a model with Linear, Embedding and Conv2d layers.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/weighted_adapter/make_reference.py

Model (weights in base.safetensors):
    h = emb(ids)                          Embedding(12, 6), ids (2, 5)
    h = lin1(relu(lin0(h)))               Linear(6, 10), Linear(10, 6)
    c = conv(h.transpose(1, 2).unsqueeze(-1))   Conv2d(6, 4, (3, 1), padding (1, 0))
    y = c.flatten(1)
Adapters (adapters/<name>, save_pretrained; init_lora_weights=False):
    a   r 4, alpha 8, on emb, lin0, lin1, conv
    b   r 4, alpha 4, rslora, on emb, lin0, conv     (no lin1)
    c   r 2, alpha 2, on lin0, lin1                  (another rank: cat and *svd only)
Each case (cases/<name>/): add_weighted_adapter(adapters, weights, "<name>", **options) after torch.manual_seed(0)
(dare_* draw their masks from it), then:
    adapter_config.json, adapter_model.safetensors   save_pretrained of the new adapter
    expected.safetensors   output: the model's output with the new adapter active (eval)
    case.json              the call's arguments
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, PeftModel, get_peft_model

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.lin0 = nn.Linear(6, 10)
        self.lin1 = nn.Linear(10, 6)
        self.conv = nn.Conv2d(6, 4, (3, 1), padding=(1, 0))

    def forward(self, ids):
        h = self.lin1(torch.relu(self.lin0(self.emb(ids))))
        return self.conv(h.transpose(1, 2).unsqueeze(-1)).flatten(1)


def base_model():
    torch.manual_seed(0)
    return Model().eval()


ADAPTERS = {
    "a": dict(r=4, lora_alpha=8, target_modules=["emb", "lin0", "lin1", "conv"]),
    "b": dict(r=4, lora_alpha=4, use_rslora=True, target_modules=["emb", "lin0", "conv"]),
    "c": dict(r=2, lora_alpha=2, target_modules=["lin0", "lin1"]),
}

CASES = {
    "svd": dict(adapters=["a", "b", "c"], weights=[1.0, -0.5, 2.0], combination_type="svd"),
    "svd_rank_clamp": dict(adapters=["a", "b"], weights=[0.7, 0.3], combination_type="svd", svd_rank=3,
                           svd_clamp=0.9),
    "svd_reduced": dict(adapters=["a", "c"], weights=[1.0, 1.0], combination_type="svd", svd_full_matrices=False),
    "linear": dict(adapters=["a", "b"], weights=[2.0, -0.5], combination_type="linear"),
    "cat": dict(adapters=["a", "b", "c"], weights=[1.0, 0.5, -1.5], combination_type="cat"),
    "ties": dict(adapters=["a", "b"], weights=[1.0, 0.8], combination_type="ties", density=0.5),
    "ties_frequency": dict(adapters=["a", "b"], weights=[1.0, -0.8], combination_type="ties", density=0.7,
                           majority_sign_method="frequency"),
    "ties_svd": dict(adapters=["a", "b", "c"], weights=[1.0, 0.8, 0.5], combination_type="ties_svd", density=0.5),
    "dare_linear": dict(adapters=["a", "b"], weights=[1.0, 0.5], combination_type="dare_linear", density=0.6),
    "dare_ties": dict(adapters=["a", "b"], weights=[1.0, 0.5], combination_type="dare_ties", density=0.6),
    "dare_linear_svd": dict(adapters=["a", "c"], weights=[1.0, 0.5], combination_type="dare_linear_svd",
                            density=0.6),
    "dare_ties_svd": dict(adapters=["a", "b"], weights=[1.0, 0.5], combination_type="dare_ties_svd", density=0.6),
    "magnitude_prune": dict(adapters=["a", "b"], weights=[1.0, 0.5], combination_type="magnitude_prune",
                            density=0.4),
    "magnitude_prune_svd": dict(adapters=["a", "b", "c"], weights=[1.0, 0.5, 1.0],
                                combination_type="magnitude_prune_svd", density=0.4),
    "single": dict(adapters=["b"], weights=[0.5], combination_type="svd"),  # one adapter: always linear
}

for d in ("adapters", "cases"):
    if os.path.isdir(d):
        shutil.rmtree(d)
base = base_model()
save_file({k: v.contiguous() for k, v in base.state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
ids = torch.tensor([[1, 5, 7, 3, 11], [0, 2, 2, 9, 4]])
save_file({"ids": ids}, "input.safetensors", metadata={"format": "pt"})
for i, (name, fields) in enumerate(ADAPTERS.items()):
    torch.manual_seed(100 + i)
    peft_model = get_peft_model(base_model(), LoraConfig(init_lora_weights=False, **fields))
    peft_model.save_pretrained(os.path.join("adapters", name))
    os.remove(os.path.join("adapters", name, "README.md"))

for name, call in CASES.items():
    model = PeftModel.from_pretrained(base_model(), os.path.join("adapters", "a"), adapter_name="a")
    for other in ("b", "c"):
        model.load_adapter(os.path.join("adapters", other), adapter_name=other)
    torch.manual_seed(0)
    model.add_weighted_adapter(adapter_name=name, **call)
    model.set_adapter(name)
    model.eval()
    with torch.no_grad():
        output = model(ids)
    out = os.path.join("cases", name)
    model.save_pretrained(out, selected_adapters=[name])
    # save_pretrained puts an adapter other than "default" in a subdirectory of its name: flatten.
    for f in os.listdir(os.path.join(out, name)):
        shutil.move(os.path.join(out, name, f), os.path.join(out, f))
    os.rmdir(os.path.join(out, name))
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    save_file({"output": output.contiguous()}, os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(call, f, indent=1, sort_keys=True)
    print(name, "r", model.peft_config[name].r, "targets", model.peft_config[name].target_modules)
