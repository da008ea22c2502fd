"""Reference for tests/methods/state_dict_options.cpp: Python PEFT 0.20's state-dict options and helpers.

Made with the reference environment of this repository (Python PEFT 0.20.1.dev0, torch 1.13.1 CPU, float32, one
thread, HF_HUB_OFFLINE=1 as env.sh sets it):

    . /work/ref/env.sh && PYTHONHASHSEED=0 $PY tests/data/methods/state_dict_options/make_reference.py

Model (weights in base.safetensors; resized.safetensors: the same with a 12-token vocabulary):
    y = lm_head(relu(lin1(relu(lin0(embed_tokens(ids))))))
    Embedding(10, 6), Linear(6, 8), Linear(8, 6), Linear(6, 10, bias=False); ids (2, 4) in input.safetensors
TfLike: the same model with get_input_embeddings / get_output_embeddings (what a 🤗 transformers model has; PEFT
only duck-types them).

Cases (reference.json, tensors in expected.safetensors):
- ignore_mismatched: set_peft_model_state_dict(model, ignore.safetensors, ignore_mismatched_sizes=True) on
  LoRA r 4 {lin0, lin1}: lin1's tensors are rank 2, lin0.base_layer.bias has 9 entries, one key is unknown. The
  warning, missing (LoRA ones) / unexpected keys, and the output; without the option: torch's error.
- packed_4bit: LoRA r 1 on lin0 loaded with a rank-2 state dict: lora_B (8, 1) against (8, 2) is Python's packed
  4-bit case, so it is not ignored and load_state_dict refuses it.
- embeddings_<case>: get_peft_model_state_dict(..., save_embedding_layers=...) on a PeftModel: warnings, keys
  (without base_model.model.) and the added embedding tensors.
- emb_adapter/: save_pretrained(save_embedding_layers=True) of TfLike, embed_tokens targeted, its embedding weight
  changed (as training with a resized/trained embedding would); output of from_pretrained on a fresh base.
- resized_adapter/: the same from the 12-token model; from_pretrained on the 10-token base with
  ignore_mismatched_sizes=True: warning (keys with base_model.model.) and output.
- key_mapping: mapped_adapter/ holds keys renamed blocks.<i>.proj; from_pretrained(..., key_mapping=KEY_MAPPING)
  output. unprefixed_adapter/: keys without base_model.model.: Python's ValueError.
- base_state_dict: get_base_model_state_dict of LoRA {embed_tokens, lin0} + modules_to_save lm_head (keys in order,
  tensors base_sd.*; the adapter in base_sd_adapter/); set_base_model_state_dict with other weights
  (other.safetensors): output; strict errors.
- rescale: rescale_adapter_scale(model, 0.5) on LoRA {embed_tokens, lin0, lin1} (init_lora_weights=False): output
  inside and after; the error for an IA3 model.
- regex_subn.json: re.subn(pattern, replacement, subject) for the key_mapping regex helper.
"""

import json
import os
import re
import shutil
import warnings

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    get_base_model_state_dict,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)
from peft.helpers import rescale_adapter_scale

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)


class Model(nn.Module):
    def __init__(self, vocab=10):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, 6)
        self.lin0 = nn.Linear(6, 8)
        self.lin1 = nn.Linear(8, 6)
        self.lm_head = nn.Linear(6, vocab, bias=False)

    def forward(self, ids):
        return self.lm_head(torch.relu(self.lin1(torch.relu(self.lin0(self.embed_tokens(ids))))))


class TfLike(Model):
    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head


class VocabConfig:
    """What PEFT reads of a transformers config here: vocab_size, and from_pretrained reading config.json (the
    reference environment's transformers is a shim without PretrainedConfig's loading)."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    @classmethod
    def from_pretrained(cls, path):
        with open(os.path.join(path, "config.json")) as f:
            return cls(json.load(f)["vocab_size"])


def base_model(cls=Model, vocab=10, seed=0):
    torch.manual_seed(seed)
    return cls(vocab).eval()


def save(tensors, path):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def run(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids)


def strip(key):
    return key[len("base_model.model."):] if key.startswith("base_model.model.") else key


def capture(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if "save_embedding_layers" in str(w.message)
                    or "embedding layer" in str(w.message) or "config file" in str(w.message)
                    or "ignore_mismatched_sizes" in str(w.message)]


def save_adapter(peft_model, d, **kwargs):
    """save_pretrained with init_lora_weights=True in the config: adapters are trained from random values here
    (init_lora_weights=False), but a tensor the load leaves out must start as Python's and peft-cpp's default
    (zero delta) for the outputs to be comparable."""
    peft_model.peft_config["default"].init_lora_weights = True
    peft_model.save_pretrained(d, **kwargs)
    os.remove(os.path.join(d, "README.md"))


for d in ("adapters", "vocab10"):
    if os.path.isdir(d):
        shutil.rmtree(d)
os.makedirs("adapters")
ref = {}
expected = {}
ids = torch.tensor([[1, 5, 7, 3], [0, 2, 9, 4]])
save({"ids": ids}, "input.safetensors")
save(base_model().state_dict(), "base.safetensors")
save(base_model(vocab=12).state_dict(), "resized.safetensors")

# ---- ignore_mismatched_sizes on set_peft_model_state_dict
torch.manual_seed(1)
trained = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"],
                                             init_lora_weights=False), base_model())
sd = dict(get_peft_model_state_dict(trained))
torch.manual_seed(2)
sd["lin1.lora_A.weight"] = torch.randn(2, 8)
sd["lin1.lora_B.weight"] = torch.randn(6, 2)
sd["lin0.base_layer.bias"] = torch.randn(9)
sd["lin9.lora_A.weight"] = torch.randn(4, 6)
save(sd, "adapters/ignore.safetensors")
sd = load_file("adapters/ignore.safetensors")  # the file's (sorted) key order, as the C++ test reads it
model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"]), base_model())
result, warned = capture(lambda: set_peft_model_state_dict(model, dict(sd), ignore_mismatched_sizes=True))
expected["ignore_mismatched.output"] = run(model, ids)
ref["ignore_mismatched"] = {
    "warnings": warned,
    "missing_lora_keys": [k for k in result.missing_keys if "lora_" in k],
    "unexpected_keys": result.unexpected_keys,
}
model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"]), base_model())
try:
    set_peft_model_state_dict(model, dict(sd))
    raise SystemExit("expected an error")
except RuntimeError as e:
    ref["ignore_mismatched"]["error_without_option"] = str(e)

torch.manual_seed(3)
r2 = {"lin0.lora_A.weight": torch.randn(2, 6), "lin0.lora_B.weight": torch.randn(8, 2)}
save(r2, "adapters/packed_4bit.safetensors")
model = inject_adapter_in_model(LoraConfig(r=1, target_modules=["lin0"]), base_model())
try:
    set_peft_model_state_dict(model, dict(r2), ignore_mismatched_sizes=True)
    raise SystemExit("expected an error")
except RuntimeError as e:
    ref["packed_4bit"] = {"error": str(e)}

# ---- save_embedding_layers
os.makedirs("vocab10")
with open("vocab10/config.json", "w") as f:
    json.dump({"vocab_size": 10}, f)
EMBEDDING_CASES = {
    # name: (model class, target_modules, save_embedding_layers, config vocab_size, name_or_path)
    "plain_auto_targeted": (Model, ["embed_tokens", "lin0"], "auto", None, None),
    "plain_true": (Model, ["lin0"], True, None, None),
    "plain_auto": (Model, ["lin0"], "auto", None, None),
    "tf_auto_targeted": (TfLike, ["embed_tokens", "lin0"], "auto", None, None),
    "tf_true": (TfLike, ["lin0"], True, None, None),
    "tf_false_targeted": (TfLike, ["embed_tokens", "lin0"], False, None, None),
    "tf_regex": (TfLike, r".*(embed_tokens|lin0)", "auto", None, None),
    "tf_regex_lm_head_only": (TfLike, r"lm_h.*", "auto", None, None),
    "tf_all_linear": (TfLike, "all-linear", "auto", None, None),
    "tf_resized": (TfLike, ["lin0"], "auto", 12, "vocab10"),
    "tf_same_vocab": (TfLike, ["lin0"], "auto", 10, "vocab10"),
    "tf_no_config_file": (TfLike, ["lin0"], "auto", 12, "no_such_dir"),
}
ref["embeddings"] = {}
for name, (cls, targets, mode, vocab, path) in EMBEDDING_CASES.items():
    base = base_model(cls)
    if vocab is not None:
        base.config = VocabConfig(vocab)
    if path is not None:
        base.name_or_path = os.path.join(HERE, path)
    torch.manual_seed(4)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    sd, warned = capture(lambda: get_peft_model_state_dict(peft_model, save_embedding_layers=mode))
    warned = [w.replace(HERE + "/", "") for w in warned]
    keys = [strip(k) for k in sd]
    ref["embeddings"][name] = {"target_modules": targets, "save_embedding_layers": mode, "vocab_size": vocab,
                               "base_model_name_or_path": path, "warnings": warned, "keys": keys}
    for k in keys:
        if "lora_" not in k:
            expected[f"embeddings.{name}.{k}"] = sd["base_model.model." + k]

# emb_adapter: saved with the embedding, its weight changed; loaded into a fresh base.
base = base_model(TfLike)
with torch.no_grad():
    base.embed_tokens.weight.mul_(-2.0).add_(0.5)
torch.manual_seed(5)
peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["embed_tokens", "lin0"], init_lora_weights=False))
save_adapter(peft_model, "adapters/emb_adapter", save_embedding_layers=True)
ref["emb_adapter"] = {"file_keys": list(load_file("adapters/emb_adapter/adapter_model.safetensors").keys())}
loaded = PeftModel.from_pretrained(base_model(TfLike), "adapters/emb_adapter")
expected["emb_adapter.output"] = run(loaded, ids)

# resized_adapter: from a 12-token model, loaded into the 10-token base with ignore_mismatched_sizes.
torch.manual_seed(6)
peft_model = get_peft_model(base_model(TfLike, vocab=12),
                            LoraConfig(r=2, target_modules=["embed_tokens", "lin0"], init_lora_weights=False))
save_adapter(peft_model, "adapters/resized_adapter", save_embedding_layers=True)
loaded, warned = capture(lambda: PeftModel.from_pretrained(base_model(TfLike), "adapters/resized_adapter",
                                                           ignore_mismatched_sizes=True))
ref["resized_adapter"] = {"warnings": warned}
expected["resized_adapter.output"] = run(loaded, ids)
try:
    PeftModel.from_pretrained(base_model(TfLike), "adapters/resized_adapter")
    raise SystemExit("expected an error")
except RuntimeError as e:
    ref["resized_adapter"]["error_without_option"] = str(e)

# ---- key_mapping
KEY_MAPPING = {r"^blocks\.0\.proj": "lin0", r"^blocks\.(?P<i>\d)\.proj": r"lin\g<i>", r"^blocks": "never"}
torch.manual_seed(7)
peft_model = get_peft_model(base_model(), LoraConfig(r=2, target_modules=["lin0", "lin1"], init_lora_weights=False))
save_adapter(peft_model, "adapters/mapped_adapter")
path = "adapters/mapped_adapter/adapter_model.safetensors"
weights = load_file(path)
save({re.sub(r"lin(\d)", r"blocks.\1.proj", k): v for k, v in weights.items()}, path)
ref["key_mapping"] = {"key_mapping": list(KEY_MAPPING.items()), "file_keys": list(load_file(path).keys())}
loaded = PeftModel.from_pretrained(base_model(), "adapters/mapped_adapter", key_mapping=KEY_MAPPING)
expected["key_mapping.output"] = run(loaded, ids)
without = PeftModel.from_pretrained(base_model(), "adapters/mapped_adapter")
expected["key_mapping.output_without_mapping"] = run(without, ids)  # nothing loaded: lora_B stays zero

shutil.copytree("adapters/mapped_adapter", "adapters/unprefixed_adapter")
save({k.replace("base_model.model.", ""): v for k, v in weights.items()},
     "adapters/unprefixed_adapter/adapter_model.safetensors")
try:
    PeftModel.from_pretrained(base_model(), "adapters/unprefixed_adapter", key_mapping=KEY_MAPPING)
    raise SystemExit("expected an error")
except ValueError as e:
    ref["key_mapping"]["unprefixed_error"] = str(e)

# ---- get_base_model_state_dict / set_base_model_state_dict
torch.manual_seed(8)
peft_model = get_peft_model(base_model(), LoraConfig(r=2, target_modules=["embed_tokens", "lin0"],
                                                     modules_to_save=["lm_head"], init_lora_weights=False))
save_adapter(peft_model, "adapters/base_sd_adapter")
base_sd = get_base_model_state_dict(peft_model)
ref["base_state_dict"] = {"keys": list(base_sd), "peft_keys": list(peft_model.base_model.model.state_dict())}
for k, v in base_sd.items():
    expected["base_sd." + k] = v.clone()  # the model's own tensors: set_base_model_state_dict below overwrites them
other = base_model(seed=9).state_dict()
save(other, "other.safetensors")
result = set_base_model_state_dict(peft_model, dict(other))
ref["base_state_dict"]["set_missing"] = result.missing_keys
ref["base_state_dict"]["set_unexpected"] = result.unexpected_keys
expected["base_state_dict.output"] = run(peft_model, ids)
partial = {k: v for k, v in other.items() if k != "lin1.bias"}
partial["lin7.weight"] = torch.zeros(1)
try:
    set_base_model_state_dict(peft_model, partial)
    raise SystemExit("expected an error")
except RuntimeError as e:
    ref["base_state_dict"]["strict_error"] = str(e)
result = set_base_model_state_dict(peft_model, partial, strict=False)
ref["base_state_dict"]["nonstrict_missing"] = result.missing_keys
ref["base_state_dict"]["nonstrict_unexpected"] = result.unexpected_keys

# ---- rescale_adapter_scale
torch.manual_seed(10)
peft_model = get_peft_model(base_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "lin0", "lin1"],
                                                     init_lora_weights=False))
save_adapter(peft_model, "adapters/rescale_adapter")
expected["rescale.before"] = run(peft_model, ids)
with rescale_adapter_scale(peft_model, 0.5):
    expected["rescale.inside"] = run(peft_model, ids)
expected["rescale.after"] = run(peft_model, ids)
with rescale_adapter_scale(peft_model, 3):
    expected["rescale.inside_int"] = run(peft_model, ids)
ia3 = get_peft_model(base_model(), IA3Config(target_modules=["lin0", "lin1"], feedforward_modules=[]))
try:
    with rescale_adapter_scale(ia3, 0.5):
        pass
    raise SystemExit("expected an error")
except ValueError as e:
    ref["rescale"] = {"non_lora_error": str(e)}
try:
    with rescale_adapter_scale(peft_model, "0.5"):
        pass
except TypeError as e:
    ref["rescale"]["type_error"] = str(e)

# ---- re.subn, as key_mapping uses it
SUBN = [
    (r"^blocks\.(\d)\.proj", r"lin\1", "blocks.3.proj.lora_A.weight"),
    (r"(?P<i>\d)", r"<\g<i>>", "a1b22c"),
    (r"x*", "-", "abxd"),
    (r"", "-", "abc"),
    (r"a|(b)", r"[\1]", "abab"),
    (r"(a)", r"\g<0>\g<1>\n\t\\", "bab"),
    (r"\.", r"\.", "a.b"),
    (r"(?<=lora_)A", "B", "lin.lora_A.weight"),
    (r"(a)(b)?", r"\2\1", "aab"),
    (r"b", r"\101", "abc"),
    (r"q", "Q", "nothing"),
    (r"(?:)", "x", ""),
    (r"\d+", "#", "résumé 12 ü3"),
]
subn = []
for pattern, replacement, subject in SUBN:
    new, n = re.subn(pattern, replacement, subject)
    subn.append({"pattern": pattern, "replacement": replacement, "subject": subject, "result": new, "count": n})
for pattern, replacement in [(r"(a)", r"\2"), (r"a", r"\q"), (r"(a)", r"\g<x>")]:
    try:
        re.subn(pattern, replacement, "a")
        raise SystemExit("expected an error")
    except (re.error, IndexError) as e:
        subn.append({"pattern": pattern, "replacement": replacement, "subject": "a", "error": str(e)})
with open("regex_subn.json", "w") as f:
    json.dump(subn, f, indent=1, ensure_ascii=False)

save(expected, "expected.safetensors")
with open("reference.json", "w") as f:
    json.dump(ref, f, indent=1, ensure_ascii=False)
print(json.dumps(ref, indent=1, ensure_ascii=False)[:6000])
