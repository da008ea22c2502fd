"""Reference outputs of Python PEFT's TrainableTokens on a model whose lm_head is tied to its embedding.

Made with the reference environment of tests/data/vectors (PEFT 0.20.1.dev0 @ 5d602fdb, torch 1.13.1, CPU,
float32):
    . /work/ref/env.sh && cd tests/data/methods/trainable_tokens && PYTHONHASHSEED=0 $PY gen_tied.py
It writes, next to itself:
    base.safetensors     the base model's tensors (embed_tokens.weight is lm_head.weight too; proj.*)
    input.safetensors    x: token ids (2, 6), every trainable token and some others
    tied/                PeftModel.save_pretrained of the adapter (adapter_config.json, adapter_model.safetensors:
                         both embed_tokens.trainable_tokens_delta and lm_head.trainable_tokens_delta, equal)
    expected.safetensors output (adapter active), output_base, output_merged (after merge_and_unload),
                         delta_grad (gradient of output.square().sum() with respect to the one delta, which
                         both the embedding and the tied head use)
The config leaves target_modules unset: PEFT picks the input embedding ("embed_tokens") and ties lm_head to
it because the model declares `_tied_weights_keys` and `tie_word_embeddings`. The delta is perturbed after
injection (init_weights=True makes it a no-op): delta += 0.1 * randn(generator seeded 777).
"""
import os

import torch
from torch import nn

from peft import TrainableTokensConfig, get_peft_model
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


class Config(dict):
    """The bits of a transformers config PEFT reads."""

    def to_dict(self):
        return dict(self)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


class TiedLM(nn.Module):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        self.config = Config(tie_word_embeddings=True)

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, x):
        return self.lm_head(torch.relu(self.proj(self.embed_tokens(x))))


def save(name, tensors):
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, os.path.join(HERE, name),
              metadata={"format": "pt"})


torch.manual_seed(0)
model = TiedLM().eval()
save("base.safetensors", {"embed_tokens.weight": model.embed_tokens.weight, "proj.weight": model.proj.weight,
                          "proj.bias": model.proj.bias})
x = torch.tensor([[2, 5, 7, 0, 1, 15], [7, 7, 3, 5, 2, 9]])
save("input.safetensors", {"x": x})
with torch.no_grad():
    output_base = model(x)

peft_model = get_peft_model(model, TrainableTokensConfig(token_indices=[2, 5, 7]))
layers = peft_model.base_model.model
assert layers.lm_head.trainable_tokens_delta is layers.embed_tokens.trainable_tokens_delta, "lm_head is not tied"
delta = layers.embed_tokens.trainable_tokens_delta["default"]
with torch.no_grad():
    delta.add_(0.1 * torch.randn(delta.shape, generator=torch.Generator().manual_seed(777)))

output = peft_model(x)
output.square().sum().backward()
delta_grad = delta.grad.clone()
peft_model.save_pretrained(os.path.join(HERE, "tied"))
os.remove(os.path.join(HERE, "tied", "README.md"))  # the model card save_pretrained adds
with torch.no_grad():
    merged = peft_model.merge_and_unload()
    output_merged = merged(x)
assert merged.lm_head.weight is merged.embed_tokens.weight
save("expected.safetensors", {"output": output, "output_base": output_base, "output_merged": output_merged,
                              "delta_grad": delta_grad})
print("max |output - output_merged| =", float((output - output_merged).abs().max()))
