"""Reference for tests/methods/xlora.cpp: X-LoRA (Python PEFT's XLoraModel) on a tiny decoder-shaped model.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/xlora/make_reference.py

The model (rebuilt in C++ by the test; weights in base.safetensors), shaped like a transformers causal LM:
    h0 = model.embed_tokens(ids)                      Embedding(20, 8)
    h1 = h0 + tanh(model.q_proj(h0)) * model.v_proj(h0)   Linear(8, 8) each
    h2 = h1 + model.fc(relu(h1))                      Linear(8, 8)
    logits = lm_head(h2)                              Linear(8, 20)
Its hidden states (output_hidden_states=True) are (h0, h1, h2); X-LoRA's classifier reads the last, h2.

lora/0, lora/1, lora/2: three LoRA adapters made by Python PEFT with init_lora_weights=False (saved with
save_pretrained), on different targets: 0 on q_proj, v_proj (r 4, alpha 8); 1 on embed_tokens, q_proj, fc (r 2,
rslora); 2 on v_proj, fc (r 3, alpha 6, lora_dropout 0.1). X-LoRA numbers the LoRA layers in module order:
model.embed_tokens 0, model.q_proj 1, model.v_proj 2, model.fc 3. (Python's X-LoRA cannot load LoRA on lm_head: it
rewrites every key to model.model.<...>.)

Each case directory holds what save_pretrained writes for the X-LoRA model (adapter_config.json, whose "adapters"
are the relative paths lora/<i>, and adapter_model.safetensors: the classifier, less the layers Python PEFT 0.20's
save drops: every "layers.<i>" with <i> an adapter name, so all of a depth-1 classifier), classifier.safetensors
(the whole classifier: the model's state_dict entries with "internal_xlora_classifier", Python's key names) and
expected.safetensors:
    logits    the model's output in eval mode (the scaling pass, then the forward with the predicted scalings)
    scalings  get_latest_scalings(): (batch, seq, n_layers, n_adapters) after that forward
    logits_disabled  the output with the X-LoRA model's adapter layers disabled (every LoRA at full scale)
input.safetensors: ids (2, 5) int64.
"""

import json
import os
import shutil
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, XLoraConfig, get_peft_model

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class TinyConfig(SimpleNamespace):
    def to_dict(self):
        return dict(vars(self))


class Output(dict):
    def __getattr__(self, name):
        return self.get(name)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(20, 8)
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, input_ids):
        h0 = self.embed_tokens(input_ids)
        h1 = h0 + torch.tanh(self.q_proj(h0)) * self.v_proj(h0)
        h2 = h1 + self.fc(torch.relu(h1))
        return h0, h1, h2


class Tiny(nn.Module):
    # Shaped like a transformers causal LM (the layers under `model`, the head beside it): Python's X-LoRA rewrites
    # the LoRA files' keys to model.model.<...>, so it only finds LoRA layers under a child named `model`.
    def __init__(self):
        super().__init__()
        self.config = TinyConfig(use_cache=False)
        self.model = Inner()
        self.lm_head = nn.Linear(8, 20)

    def forward(self, input_ids, output_hidden_states=False, return_dict=False, **kwargs):
        hidden_states = self.model(input_ids)
        logits = self.lm_head(hidden_states[-1])
        return Output(logits=logits, hidden_states=hidden_states if output_hidden_states else None)


def base_model():
    torch.manual_seed(0)
    model = Tiny()
    return model


LORAS = [
    dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8),
    dict(target_modules=["embed_tokens", "q_proj", "fc"], r=2, lora_alpha=4, use_rslora=True),
    dict(target_modules=["v_proj", "fc"], r=3, lora_alpha=6, lora_dropout=0.1),
]

CASES = {
    # Python's defaults: one linear layer, softmax, scalings shared by all layers, scaling pass value 0.
    "default": dict(),
    # A deeper classifier, per-layer scalings, top-2 with a softmax over the kept ones, a non-zero scaling pass.
    "layerwise_topk": dict(xlora_depth=3, xlora_size=16, layerwise_scalings=True, top_k_lora=2, enable_softmax=False,
                           enable_softmax_topk=True, scaling_pass_value=0.3, global_scaling_weight=0.7),
    # Softmax with a temperature, top-1 without the second softmax, depth 2.
    "temperature_top1": dict(xlora_depth=2, xlora_size=12, softmax_temperature=0.5, top_k_lora=1,
                             global_scaling_weight=1.5),
}

if os.path.isdir("lora"):
    shutil.rmtree("lora")
for i, fields in enumerate(LORAS):
    torch.manual_seed(100 + i)
    peft_model = get_peft_model(base_model(), LoraConfig(init_lora_weights=False, **fields))
    peft_model.save_pretrained(os.path.join("lora", str(i)))
    os.remove(os.path.join("lora", str(i), "README.md"))  # the model card

base = base_model()
save_file({k: v.contiguous() for k, v in base.state_dict().items()}, "base.safetensors", metadata={"format": "pt"})
ids = torch.tensor([[1, 5, 7, 3, 19], [0, 2, 2, 11, 4]])
save_file({"ids": ids}, "input.safetensors", metadata={"format": "pt"})

for name, fields in CASES.items():
    torch.manual_seed(7)
    config = XLoraConfig(hidden_size=8, adapters={str(i): os.path.join("lora", str(i)) for i in range(len(LORAS))},
                         **fields)
    model = get_peft_model(base_model(), config)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        scalings = model.get_latest_scalings()
        model.disable_adapter_layers()
        logits_disabled = model(input_ids=ids).logits
        model.enable_adapter_layers()
    if os.path.isdir(name):
        shutil.rmtree(name)
    model.save_pretrained(name)
    # save_pretrained also writes each LoRA adapter again (with base weights) into <name>/<i> and a model card: not
    # needed here.
    for entry in os.listdir(name):
        path = os.path.join(name, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif entry == "README.md":
            os.remove(path)
    # The whole classifier, as the forward used it: Python's save drops the classifier layers whose index is an
    # adapter name ("layers.0" for adapters "0", "1", ...), so adapter_model.safetensors cannot restore it.
    classifier = {k: v.contiguous() for k, v in model.state_dict().items() if "internal_xlora_classifier" in k}
    save_file(classifier, os.path.join(name, "classifier.safetensors"), metadata={"format": "pt"})
    save_file({"logits": logits.contiguous(), "scalings": scalings.contiguous(),
               "logits_disabled": logits_disabled.contiguous()},
              os.path.join(name, "expected.safetensors"), metadata={"format": "pt"})
    print(name, tuple(scalings.shape), sorted(os.listdir(name)), sorted(classifier),
          float((logits - logits_disabled).abs().max()))
