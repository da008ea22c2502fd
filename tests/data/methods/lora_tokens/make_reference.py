"""Reference for tests/methods/lora_tokens.cpp: LoRA with `trainable_token_indices` (Python PEFT wraps the named
embedding/head layers in TrainableTokensWrapper next to the LoRA layers) and `ensure_weight_tying`.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/lora_tokens/make_reference.py

Model: y = lm_head(relu(proj(embed_tokens(x)))), Embedding(16, 8), Linear(8, 8), Linear(8, 16, bias=False);
"tied" models share embed_tokens.weight with lm_head (tie_word_embeddings=True, _tied_weights_keys), "untied" ones
do not (base_<kind>.safetensors holds the model's own state dict). x (input.safetensors): token ids (2, 6).
Each case <name>/ is PeftModel.save_pretrained after the adapter was perturbed (lora_B, deltas: += 0.1 * randn
from a generator seeded 777, so nothing is a no-op), and <name>.safetensors holds
    output          the model's output (adapter active)
    output_disabled with disable_adapter()
    output_merged   after merge_and_unload
    grad.<key>      gradient of output.square().sum() for every trainable tensor, keyed as in the saved file
                    (tied tensors appear once, under the key the file keeps)
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Config(dict):
    """The bits of a transformers config PEFT reads."""

    def to_dict(self):
        return dict(self)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


class LM(nn.Module):
    def __init__(self, tied):
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        if tied:
            self.lm_head.weight = self.embed_tokens.weight
            self._tied_weights_keys = ["lm_head.weight"]
        self.config = Config(tie_word_embeddings=tied)

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, x):
        return self.lm_head(torch.relu(self.proj(self.embed_tokens(x))))


def base_model(tied):
    torch.manual_seed(0)
    return LM(tied).eval()


def save(name, tensors):
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, name, metadata={"format": "pt"})


for kind in ["tied", "untied"]:
    save(f"base_{kind}.safetensors", base_model(kind == "tied").state_dict())
x = torch.tensor([[2, 5, 7, 0, 1, 15], [7, 7, 3, 5, 2, 9]])
save("input.safetensors", {"x": x})

CASES = {
    # a list: the input embedding ("embed_tokens")
    "list_untied": ("untied", dict(target_modules=["proj"], trainable_token_indices=[2, 5, 7])),
    # a dict: several layers, each its own rows
    "dict_untied": ("untied", dict(target_modules=["proj"], trainable_token_indices={"embed_tokens": [1, 2],
                                                                                     "lm_head": [3, 4, 5]})),
    # tied head: one delta for embedding and head, saved once
    "list_tied": ("tied", dict(target_modules=["proj"], trainable_token_indices=[2, 5, 7])),
    "dict_tied_same": ("tied", dict(target_modules=["proj"], trainable_token_indices={"embed_tokens": [2, 5],
                                                                                      "lm_head": [2, 5]})),
    # tied weights, different rows, no ensure_weight_tying: two deltas
    "dict_tied_different": ("tied", dict(target_modules=["proj"], trainable_token_indices={"embed_tokens": [2, 5],
                                                                                           "lm_head": [3]})),
    "list_tied_ensure": ("tied", dict(target_modules=["proj"], trainable_token_indices=[2, 5, 7],
                                      ensure_weight_tying=True)),
    # ensure_weight_tying with the embedding saved whole: lm_head's copy is the embedding's copy
    "save_tied_ensure": ("tied", dict(target_modules=["proj"], modules_to_save=["embed_tokens"],
                                      ensure_weight_tying=True)),
    # ensure_weight_tying with LoRA on the embedding: lm_head's LoRA uses the embedding's factors
    "target_tied_ensure": ("tied", dict(target_modules=["proj", "embed_tokens"], ensure_weight_tying=True)),
}

for name, (kind, kwargs) in CASES.items():
    base = base_model(kind == "tied")
    torch.manual_seed(7)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, **kwargs))
    gen = torch.Generator().manual_seed(777)
    seen = set()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if not p.requires_grad or p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            if "lora_B" in pname or "lora_embedding_A" in pname or "trainable_tokens_delta" in pname \
                    or "modules_to_save" in pname:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    output = model(x)
    output.square().sum().backward()
    grads = {}
    state = get_peft_model_state_dict(model)
    params = dict(model.named_parameters())
    for key in state:
        # the saved key without "base_model.model." and with the adapter name back where the model has it
        short = key[len("base_model.model."):]
        candidates = [n for n in params if n[len("base_model.model."):].replace(".default", "") == short]
        if len(candidates) == 1 and params[candidates[0]].grad is not None:
            grads["grad." + key] = params[candidates[0]].grad
    with torch.no_grad():
        with model.disable_adapter():
            output_disabled = model(x)
    out_dir = name
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    os.remove(os.path.join(out_dir, "README.md"))
    with torch.no_grad():
        merged = model.merge_and_unload()
        output_merged = merged(x)
    save(f"{name}.safetensors", {"output": output, "output_disabled": output_disabled,
                                 "output_merged": output_merged, **grads})
    print(name, sorted(state), "grads:", sorted(grads),
          "max|out-merged|=%.2e" % float((output - output_merged).abs().max()))
