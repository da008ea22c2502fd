"""Reference adapter gradients from Python PEFT, for tests/test_training.cpp.

For each case of tests/data/vectors listed in CASES: the case's base model (model.json + base.safetensors), its
adapter injected with inject_adapter_in_model (inference_mode=False, so the adapter trains) and loaded from
peft_state_dict.safetensors, eval mode (no dropout), one forward on input.safetensors and the loss
sum(output * w) with w = randn(output.shape, generator=torch.Generator().manual_seed(7)), one backward.
Writes <case>/grads.safetensors (every parameter's .grad, under its named_parameters() name; the script checks
that no base parameter has one) and <case>/loss_weights.safetensors ({"w": w}).

Run in the reference environment (the workplace's reference/README.md: Debian's python3-torch 1.13.1, PEFT
5d602fdb... and its helpers; it provides the safetensors shim and specmodel.py):

    . $REF/env.sh; export PYTHONHASHSEED=0
    $PY tests/data/gradients/generate.py
Two runs give byte-identical files.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "vectors")

for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    scripts = os.path.join(os.path.dirname(entry), "scripts")
    if os.path.exists(os.path.join(scripts, "specmodel.py")):
        sys.path.insert(0, scripts)
        break
else:
    sys.exit("specmodel.py not found: source the reference environment's env.sh first")

import torch  # noqa: E402
from peft import inject_adapter_in_model, set_peft_model_state_dict  # noqa: E402
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import specmodel as S  # noqa: E402

CASES = ["lora_mlp_basic", "lora_mlp_rslora", "lora_mlp_dora", "lora_conv2d", "lora_embedding", "ia3_mlp",
         "loha_mlp", "oft_mlp"]


def run(name):
    src = os.path.join(VECTORS, name)
    with open(os.path.join(src, "model.json")) as f:
        spec = json.load(f)
    with open(os.path.join(src, "adapter_config.json")) as f:
        config_json = json.load(f)
    torch.manual_seed(0)
    model = S.build(spec)
    model.load_state_dict(load_file(os.path.join(src, "base.safetensors")))
    base_names = {n for n, _ in model.named_parameters()}
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[config_json["peft_type"]]
    config = config_cls.from_pretrained(src)
    config.inference_mode = False
    torch.manual_seed(1234)
    model = inject_adapter_in_model(config, model)
    result = set_peft_model_state_dict(model, load_file(os.path.join(src, "peft_state_dict.safetensors")))
    assert not result.unexpected_keys, result.unexpected_keys
    model.eval()
    x = load_file(os.path.join(src, "input.safetensors"))["x"]
    out = model(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * w).sum().backward()
    grads = {}
    for n, p in model.named_parameters():
        if n in base_names:
            assert p.grad is None, f"{name}: base parameter {n} got a gradient"
            continue
        if p.grad is not None:
            grads[n] = p.grad.detach().clone().contiguous()
    assert grads, name
    out_dir = os.path.join(HERE, name)
    os.makedirs(out_dir, exist_ok=True)
    save_file(grads, os.path.join(out_dir, "grads.safetensors"))
    save_file({"w": w.contiguous()}, os.path.join(out_dir, "loss_weights.safetensors"))
    print(f"{name}: {len(grads)} gradients")


for case in CASES:
    run(case)
