"""Reference for tests/methods/lora_mha.cpp: LoRA on nn.MultiheadAttention (Python PEFT's lora.MultiheadAttention),
inside an nn.TransformerEncoderLayer and on its own.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/lora_mha/make_reference.py

Models (weights in <case>/base.safetensors, Python's names; sequence-first inputs, as LibTorch's layers take them):
  encoder:   enc = TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0) (relu, post-norm);
             y = enc(x), x (5, 3, 8) = (sequence, batch, features).
  attention: attn = MultiheadAttention(8, 2, bias=True, add_bias_kv=True); y = attn(x, x, x)[0] (need_weights=False).

Cases (each a directory with what save_pretrained writes, adapter_config.json + adapter_model.safetensors):
  encoder/default  LoRA r 2, alpha 4, init_lora_weights=False on ["self_attn", "linear1"]
  encoder/other    LoRA r 3, alpha 3, rslora, init_lora_weights=False on ["self_attn"] (the second adapter)
  attention/default  LoRA r 2, alpha 2, init_lora_weights=False on ["attn"]
<model>/expected.safetensors:
  x                 the input
  output_base       the base model's output
  output            with "default" active (eval)
  output_other      with "other" active (encoder only)
  output_merged     after merge_and_unload of "default"
  merged.<name>     the merged model's state dict (base names)
  grad.<name>       after one backward of (output * w).sum(), w = linspace(-1, 1) over the output, with "default"
                    trained: the gradient of each adapter tensor (state-dict names with the adapter name)
"""

import os
import shutil

import torch
from safetensors.torch import save_file
from torch import nn

from peft import LoraConfig, get_peft_model

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0)

    def forward(self, x):
        return self.enc(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, bias=True, add_bias_kv=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def base(cls, seed):
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():  # non-zero biases everywhere
        for p in model.parameters():
            if p.dim() == 1 or p.shape[0] == 1:
                p.normal_(0, 0.5)
    return model.eval()


MODELS = {
    "encoder": (Encoder, 0, {"default": dict(target_modules=["self_attn", "linear1"], r=2, lora_alpha=4),
                             "other": dict(target_modules=["self_attn"], r=3, lora_alpha=3, use_rslora=True)}),
    "attention": (Attention, 1, {"default": dict(target_modules=["attn"], r=2, lora_alpha=2)}),
}

for name, (cls, seed, adapters) in MODELS.items():
    if os.path.isdir(name):
        shutil.rmtree(name)
    os.makedirs(name)
    model = base(cls, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(name, "base.safetensors"),
              metadata={"format": "pt"})
    torch.manual_seed(seed + 10)
    x = torch.randn(5, 3, 8)
    expected = {"x": x}
    with torch.no_grad():
        expected["output_base"] = model(x)
    peft_model = None
    for adapter, fields in adapters.items():
        config = LoraConfig(init_lora_weights=False, **fields)
        torch.manual_seed(seed + 100 + len(expected))
        if peft_model is None:
            peft_model = get_peft_model(model, config)
        else:
            peft_model.add_adapter(adapter, config)
    peft_model.save_pretrained(name)
    if os.path.exists(os.path.join(name, "README.md")):
        os.remove(os.path.join(name, "README.md"))
    peft_model.eval()
    for adapter in adapters:
        peft_model.set_adapter(adapter)
        with torch.no_grad():
            expected["output" if adapter == "default" else "output_" + adapter] = peft_model(x)
    peft_model.set_adapter("default")
    # Gradients of the adapter tensors (train mode; dropout is 0).
    peft_model.train()
    y = peft_model(x)
    w = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * w).sum().backward()
    for key, p in peft_model.named_parameters():
        if p.grad is not None:
            expected["grad." + key[len("base_model.model."):]] = p.grad.detach().clone()
    peft_model.eval()
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        expected["output_merged"] = merged(x)
    for key, value in merged.state_dict().items():
        expected["merged." + key] = value.detach().clone()
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(name, "expected.safetensors"),
              metadata={"format": "pt"})
    print(name, sorted(k for k in expected if k.startswith("grad.")))
    print(name, "diff", float((expected["output"] - expected["output_base"]).abs().max()),
          float((expected["output_merged"] - expected["output"]).abs().max()))
