"""TorchScript exports of small models plus Python PEFT reference outputs for adapters on them (issue 14).

Writes, next to this file, one folder per model (gpt2_small, cnn, mlp): the base model's weights and input,
`traced.pt` / `scripted.pt` of the BASE model (torch.jit.trace / torch.jit.script, saved with torch.jit.save),
a description of their TorchScript structure, and one sub-folder per adapter in the format of
tests/data/vectors (adapter_config.json + adapter_model.safetensors as written by PeftModel.save_pretrained,
output*.safetensors, merged_model*.safetensors) plus `merged_traced.pt`, a trace of merge_and_unload()'s model.
README.md (next to this file) describes every file.

Run with the reference environment (the workplace's reference/README.md: Debian python3-torch 1.13.1 and
PEFT 0.20.1.dev0 @ 5d602fdb from source):

    . $REF/env.sh; export PYTHONHASHSEED=0
    $PY tests/data/torchscript/make_exports.py

Deterministic: every .safetensors/.json/.txt file is byte-identical across runs. The .pt files are
byte-identical across runs too once their debug records are stripped (`_strip_debug`, below), which this
script does because they otherwise embed the absolute path of this script.
"""
import copy
import io
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D as HFConv1D  # the reference env's stand-in for transformers' Conv1D

import peft
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
VECTORS = os.path.join(REPO, "tests", "data", "vectors")
PEFT_COMMIT = "5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40"
ATOL = 1e-5

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


# =============================================================== models (plain torch, traceable and scriptable)
class Conv1D(HFConv1D):
    """GPT-2's Conv1D: weight [nx (in), nf (out)], bias [nf]; y = x @ weight + bias.
    Subclasses the transformers class so that PEFT recognises it (fan_in_fan_out); forward rewritten so that
    torch.jit.script accepts it."""

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


class Attention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.head_dim = d // n_head
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)

    def forward(self, x):
        b, t, c = x.size(0), x.size(1), x.size(2)
        qkv = self.c_attn(x)
        q, k, v = qkv.split(c, dim=2)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(mask.logical_not(), float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLPBlock(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.c_fc = nn.Linear(d, hidden)
        self.c_proj = nn.Linear(hidden, d)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = Attention(d, n_head)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = MLPBlock(d, 4 * d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2Model(nn.Module):
    def __init__(self, vocab, n_pos, d, n_layer, n_head):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(n_pos, d)
        self.h = nn.ModuleList([Block(d, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.size(1), dtype=torch.long, device=input_ids.device).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, vocab=50, n_pos=16, d=32, n_layer=2, n_head=4):
        super().__init__()
        self.transformer = GPT2Model(vocab, n_pos, d, n_layer, n_head)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        return self.lm_head(self.transformer(input_ids))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class MLP(nn.Module):
    """The vectors' MLP (specmodel.mlp_spec): lin0 10->20, relu (a module, called twice), lin1 20->20, lin2 20->4."""

    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 20)
        self.lin2 = nn.Linear(20, 4)

    def forward(self, x):
        return self.lin2(self.relu(self.lin1(self.relu(self.lin0(x)))))


# =============================================================== helpers
def _save(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def _json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _fwd(model, x):
    with torch.no_grad():
        return model(x)


def _maxdiff(a, b):
    return float((a - b).abs().max())


def _capture(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = fn()
    return res, sorted({f"{x.category.__name__}: {x.message}" for x in w})


def _strip_debug(path):
    """Rewrite a torch.jit.save archive without its `*.debug_pkl` records (source ranges that embed this script's
    absolute path, so the files would depend on where the repository is checked out). All other records are
    copied unchanged, stored uncompressed, in the same order, with a fixed timestamp. torch.jit.load (and
    LibTorch's) treats debug records as optional."""
    with zipfile.ZipFile(path) as zin:
        records = [(i.filename, zin.read(i.filename)) for i in zin.infolist() if not i.filename.endswith(".debug_pkl")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for name, data in records:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _jit_save(m, path):
    torch.jit.save(m, path)
    _strip_debug(path)


def _qualified(m):
    return m._c._type().qualified_name()


def _count(graph, kind):
    return sum(1 for n in graph.nodes() if n.kind() == kind)


def _all_nodes(graph):
    out = []
    for n in graph.nodes():
        out.append(n)
        for b in n.blocks():
            for n2 in b.nodes():
                out.append(n2)
    return out


def _kinds(graph):
    ks = {}
    for n in _all_nodes(graph):
        ks[n.kind()] = ks.get(n.kind(), 0) + 1
    return dict(sorted(ks.items()))


def _callmethods(graph):
    """Method names of the prim::CallMethod nodes in a graph (top level and one level of nested blocks)."""
    out = []
    for n in _all_nodes(graph):
        if n.kind() == "prim::CallMethod":
            out.append(n.s("name"))
    return out


def describe(jm, eager):
    """Structure of a loaded TorchScript module, compared with the eager model."""
    eager_names = [n for n, _ in eager.named_modules()]
    jit_names = [n for n, _ in jm.named_modules()]
    mods = []
    types_by_class = {}
    for name, sub in jm.named_modules():
        q = _qualified(sub)
        em = eager.get_submodule(name) if name else eager
        methods = sorted(sub._c._method_names())
        entry = {"name": name, "eager_class": type(em).__name__, "qualified_type": q, "original_name": sub.original_name,
                 "methods": methods}
        if "forward" in methods:
            g = sub.graph
            entry["forward_callmethods"] = _callmethods(g)
            entry["forward_ops"] = sorted({k for k in _kinds(g) if k.startswith("aten::")})
        mods.append(entry)
        types_by_class.setdefault(type(em).__name__, set()).add(q)
    g = jm.graph
    ig = jm.inlined_graph
    return {
        "module_names_equal_eager": jit_names == eager_names,
        "module_names": jit_names,
        "parameter_names_equal_eager_state_dict": [n for n, _ in jm.named_parameters()] == [n for n, _ in eager.named_parameters()],
        "state_dict_keys_equal_eager": list(jm.state_dict().keys()) == list(eager.state_dict().keys()),
        "modules": mods,
        "distinct_types_per_eager_class": {k: sorted(v) for k, v in sorted(types_by_class.items())},
        "top_graph_prim_CallMethod": _count(g, "prim::CallMethod"),
        "top_graph_node_kinds": _kinds(g),
        "inlined_graph_prim_CallMethod": _count(ig, "prim::CallMethod"),
        "inlined_graph_node_kinds": _kinds(ig),
    }


def export_base(model, x, d, meta):
    """traced.pt / scripted.pt of the base model; checks; structure.json; graph/code dumps."""
    y = _fwd(model, x)
    struct = {}
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=True)
    scripted = torch.jit.script(model)
    os.makedirs(os.path.join(d, "graphs"), exist_ok=True)
    for kind, jm in (("traced", traced), ("scripted", scripted)):
        p = os.path.join(d, f"{kind}.pt")
        _jit_save(jm, p)
        loaded = torch.jit.load(p)
        loaded.eval()
        diff = _maxdiff(_fwd(loaded, x), y)
        meta["checks"][f"maxdiff_{kind}_pt_vs_eager"] = diff
        assert diff <= ATOL, (d, kind, diff)
        s = describe(loaded, model)
        assert s["module_names_equal_eager"], (d, kind, s["module_names"])
        assert s["state_dict_keys_equal_eager"], (d, kind)
        struct[f"{kind}.pt"] = s
        with open(os.path.join(d, "graphs", f"{kind}.graph.txt"), "w") as f:
            f.write(str(loaded.graph))
        with open(os.path.join(d, "graphs", f"{kind}.inlined_graph.txt"), "w") as f:
            f.write(str(loaded.inlined_graph))
        with open(os.path.join(d, "graphs", f"{kind}.code.txt"), "w") as f:
            for name, sub in loaded.named_modules():
                f.write(f"# ---- module '{name}' ({_qualified(sub)})\n")
                try:
                    f.write(sub.code.rstrip() + "\n")
                except (RuntimeError, AttributeError) as e:  # modules without forward (ModuleList)
                    f.write(f"# (no forward: {str(e).splitlines()[0]})\n")
    _json(os.path.join(d, "structure.json"), struct)
    return y


def _copy_saved(tmp, d):
    out = []
    for root, _, files in sorted(os.walk(tmp)):
        for fn in sorted(files):
            if fn == "README.md":
                continue
            rel = os.path.relpath(os.path.join(root, fn), tmp)
            os.makedirs(os.path.dirname(os.path.join(d, rel)) or d, exist_ok=True)
            shutil.copy(os.path.join(root, fn), os.path.join(d, rel))
            out.append(rel)
    return out


def adapter_case(model_dir, name, base, x, adapters, desc, from_dirs=None, vectors_case=None):
    """adapters: [(adapter_name, config)]. With from_dirs ({adapter_name: dir}), the adapters are loaded with
    PeftModel.from_pretrained/load_adapter from those save_pretrained folders instead of being created."""
    d = os.path.join(model_dir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    first = adapters[0][0]
    meta = {"case": name, "description": desc, "peft_version": peft.__version__, "peft_commit": PEFT_COMMIT,
            "torch_version": torch.__version__, "adapters": [a for a, _ in adapters], "checks": {}, "files": {}}
    y_base = _fwd(base, x)
    _save(os.path.join(d, "output_base.safetensors"), {"output": y_base})
    meta["files"]["output_base.safetensors"] = "base model output (no adapter) = ../output_base.safetensors"

    torch.manual_seed(1234)
    if from_dirs:
        pm, w = _capture(lambda: PeftModel.from_pretrained(copy.deepcopy(base), from_dirs[first], adapter_name=first))
        for a, _ in adapters[1:]:
            _, w2 = _capture(lambda: pm.load_adapter(from_dirs[a], adapter_name=a))
            w += w2
        meta["source"] = f"adapter files copied from tests/data/vectors/{vectors_case} (save_pretrained output)"
    else:
        pm, w = _capture(lambda: get_peft_model(copy.deepcopy(base), copy.deepcopy(adapters[0][1]), adapter_name=first))
        for a, cfg in adapters[1:]:
            _, w2 = _capture(lambda: pm.add_adapter(a, copy.deepcopy(cfg)))
            w += w2
        meta["seeds"] = {"adapter_init": "torch.manual_seed(1234) before get_peft_model (init_*_weights=False)"}
    meta["injection_warnings"] = w
    pm.eval()
    meta["targeted_modules"] = {}
    for a, _ in adapters:
        meta["targeted_modules"][a] = sorted(
            n for n, m in pm.base_model.model.named_modules()
            if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) and a in _adapter_keys(m))
    meta["peft_layer_types"] = {n: type(m).__module__.replace("peft.tuners.", "") + "." + type(m).__name__
                                for n, m in pm.base_model.model.named_modules()
                                if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)}
    meta["per_layer_fan_in_fan_out"] = {n: bool(m.fan_in_fan_out) for n, m in pm.base_model.model.named_modules()
                                        if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)
                                        and hasattr(m, "fan_in_fan_out")}

    outs = {}
    for a, _ in adapters:
        pm.set_adapter(a)
        outs[a] = _fwd(pm, x)
        meta["checks"][f"maxdiff_output_{a}_vs_base"] = _maxdiff(outs[a], y_base)
        assert meta["checks"][f"maxdiff_output_{a}_vs_base"] > 1e-3, (name, a, "adapter is a no-op")
    pm.set_adapter(first)
    _save(os.path.join(d, "output.safetensors"), {"output": outs[first]})
    meta["files"]["output.safetensors"] = f"forward with adapter '{first}' active (eval mode)"
    if len(adapters) > 1:
        for a, _ in adapters:
            _save(os.path.join(d, f"output_{a}.safetensors"), {"output": outs[a]})
            meta["files"][f"output_{a}.safetensors"] = f"forward with only adapter '{a}' active"
    with pm.disable_adapter():
        y_dis = _fwd(pm, x)
    meta["checks"]["maxdiff_disabled_vs_base"] = _maxdiff(y_dis, y_base)
    assert meta["checks"]["maxdiff_disabled_vs_base"] == 0.0
    with open(os.path.join(d, "print.txt"), "w") as f:
        f.write(str(pm.base_model.model) + "\n")

    # adapter files
    if from_dirs:
        for a, _ in adapters:
            sub = "" if a == first else a
            os.makedirs(os.path.join(d, sub), exist_ok=True)
            for fn in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(os.path.join(from_dirs[a], fn), os.path.join(d, sub, fn))
                meta["files"][os.path.join(sub, fn)] = f"copied from tests/data/vectors/{vectors_case}"
    else:
        tmp = tempfile.mkdtemp()
        pm.save_pretrained(tmp)
        for rel in _copy_saved(tmp, d):
            meta["files"][rel] = "written by PeftModel.save_pretrained"
        shutil.rmtree(tmp)
    # round trip: a fresh PeftModel from the written files reproduces the outputs
    rt, _ = _capture(lambda: PeftModel.from_pretrained(copy.deepcopy(base), d, adapter_name=first))
    for a, _ in adapters[1:]:
        rt.load_adapter(os.path.join(d, a), adapter_name=a)
    rt.eval()
    for a, _ in adapters:
        rt.set_adapter(a)
        meta["checks"][f"maxdiff_reloaded_from_files_{a}"] = _maxdiff(_fwd(rt, x), outs[a])
        assert meta["checks"][f"maxdiff_reloaded_from_files_{a}"] == 0.0, (name, a)
    if vectors_case:
        ref = load_file(os.path.join(VECTORS, vectors_case, "output.safetensors"))["output"]
        meta["checks"]["maxdiff_output_vs_vectors_case_output"] = _maxdiff(outs[first], ref)
        assert meta["checks"]["maxdiff_output_vs_vectors_case_output"] <= ATOL

    # merge
    for a, _ in adapters:
        pmc = copy.deepcopy(pm)
        pmc.set_adapter(a)
        merged, mw = _capture(lambda: pmc.merge_and_unload())
        merged.eval()
        ym = _fwd(merged, x)
        suffix = "" if a == first else f"_{a}"
        _save(os.path.join(d, f"output_merged{suffix}.safetensors"), {"output": ym})
        _save(os.path.join(d, f"merged_model{suffix}.safetensors"), merged.state_dict())
        meta["files"][f"output_merged{suffix}.safetensors"] = f"forward of merge_and_unload() with adapter '{a}' active"
        meta["files"][f"merged_model{suffix}.safetensors"] = f"state_dict of merge_and_unload() model (adapter '{a}')"
        meta["checks"][f"maxdiff_merged_vs_unmerged_{a}"] = _maxdiff(ym, outs[a])
        assert meta["checks"][f"maxdiff_merged_vs_unmerged_{a}"] <= ATOL, (name, a)
        if mw:
            meta.setdefault("merge_warnings", []).extend(mw)
        with torch.no_grad():
            tm = torch.jit.trace(merged, (x,))
        p = os.path.join(d, f"merged_traced{suffix}.pt")
        _jit_save(tm, p)
        lt = torch.jit.load(p)
        meta["checks"][f"maxdiff_merged_traced_pt_vs_unmerged_{a}"] = _maxdiff(_fwd(lt, x), outs[a])
        assert meta["checks"][f"maxdiff_merged_traced_pt_vs_unmerged_{a}"] <= ATOL, (name, a)
        meta["checks"][f"merged_traced_pt_module_names_equal_base"] = (
            [n for n, _ in lt.named_modules()] == [n for n, _ in base.named_modules()])
        meta["files"][f"merged_traced{suffix}.pt"] = (
            f"torch.jit.trace of the merge_and_unload() model (adapter '{a}'), debug records stripped")

    meta["peft_configs"] = {a: json.loads(json.dumps(pm.peft_config[a].to_dict(), default=_jsonable))
                            for a, _ in adapters}
    _json(os.path.join(d, "meta.json"), meta)
    print(f"  {os.path.relpath(d, HERE)}: " + ", ".join(
        f"{k}={v:.3g}" for k, v in meta["checks"].items() if isinstance(v, float)), flush=True)


def _adapter_keys(m):
    keys = set()
    for attr in ("lora_A", "lora_embedding_A", "ia3_l"):
        if hasattr(m, attr):
            keys |= set(getattr(m, attr).keys())
    return keys


def _jsonable(o):
    if isinstance(o, set):
        return sorted(o)
    if hasattr(o, "value"):
        return o.value
    return str(o)


def model_folder(name, base, x, desc, extra_meta=None):
    d = os.path.join(HERE, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    base.eval()
    meta = {"model": name, "description": desc, "class": type(base).__name__, "torch_version": torch.__version__,
            "checks": {}}
    meta.update(extra_meta or {})
    _save(os.path.join(d, "base.safetensors"), base.state_dict())
    _save(os.path.join(d, "input.safetensors"), {"x": x})
    y = export_base(base, x, d, meta)
    _save(os.path.join(d, "output_base.safetensors"), {"output": y})
    meta["modules"] = [{"name": n, "class": type(m).__name__} for n, m in base.named_modules()]
    _json(os.path.join(d, "meta.json"), meta)
    print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in meta["checks"].items()), flush=True)
    return d


# =============================================================== the models and adapters
def gpt2():
    torch.manual_seed(0)
    base = GPT2LMHeadModel()
    # transformers' Conv1D starts with weight ~ N(0, 0.02) and zero bias; use larger values so that every
    # term matters numerically
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, Conv1D):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    base.eval()
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(42), dtype=torch.int64)
    d = model_folder("gpt2_small", base, x,
                     "GPT-2-shaped decoder (plain torch): wte/wpe embeddings, 2 blocks (ln_1, attn.c_attn/c_proj as "
                     "Conv1D, ln_2, mlp.c_fc/c_proj as nn.Linear, gelu tanh), ln_f, lm_head (Linear, no bias)",
                     {"seeds": {"base_model": "torch.manual_seed(0) before building; then every Conv1D weight = "
                                              "0.2*randn, bias = 0.1*randn (torch.Generator().manual_seed(1), modules() order, weight then bias)",
                                "input": "torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(42))"}})
    tgt = ["wte", "c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head"]
    adapter_case(d, "lora", base, x, [("default", LoraConfig(
        r=4, lora_alpha=8, target_modules=tgt, fan_in_fan_out=True, init_lora_weights=False))],
        "LoRA r=4 alpha=8 on the Embedding wte, the Conv1D c_attn / attn.c_proj (fan_in_fan_out) and the "
        "nn.Linear mlp.c_fc / mlp.c_proj / lm_head")
    adapter_case(d, "lora_rslora", base, x, [("default", LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], fan_in_fan_out=True, use_rslora=True,
        init_lora_weights=False))], "rsLoRA (scaling alpha/sqrt(r) = 4) on c_attn (Conv1D) and mlp.c_fc (Linear)")
    adapter_case(d, "lora_dora", base, x, [("default", LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc"], fan_in_fan_out=True, use_dora=True,
        init_lora_weights=False))], "DoRA on the Conv1D c_attn / attn.c_proj (fan_in_fan_out) and the Linear mlp.c_fc")
    adapter_case(d, "lora_two_adapters", base, x, [
        ("default", LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True,
                               init_lora_weights=False)),
        ("other", LoraConfig(r=2, lora_alpha=2, target_modules=["attn.c_proj", "mlp.c_fc", "lm_head"],
                             init_lora_weights=False))],
        "two LoRA adapters for set_adapter switching: 'default' r=4 alpha=8 on c_attn (Conv1D) + mlp.c_proj; "
        "'other' r=2 alpha=2 on attn.c_proj (Conv1D) + mlp.c_fc + lm_head")
    adapter_case(d, "ia3", base, x, [("default", IA3Config(
        target_modules=["c_attn", "mlp.c_fc", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True,
        init_ia3_weights=False))],
        "IA3 on c_attn (Conv1D, output scaling), mlp.c_fc (Linear, output scaling), mlp.c_proj (Linear, "
        "feedforward: input scaling)")


def cnn():
    torch.manual_seed(0)
    base = SmallCNN().eval()
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(42))
    d = model_folder("cnn", base, x, "small CNN: conv1 Conv2d(3,8,3,pad 1), relu, conv2 Conv2d(8,8,3,stride 2,pad 1), relu, "
                     "flatten, fc Linear(128,5)",
                     {"seeds": {"base_model": "torch.manual_seed(0) before building (default init)",
                                "input": "torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(42))"}})
    adapter_case(d, "lora", base, x, [("default", LoraConfig(
        r=4, lora_alpha=8, target_modules=["conv1", "conv2", "fc"], init_lora_weights=False))],
        "LoRA r=4 alpha=8 on both Conv2d and the Linear")
    adapter_case(d, "lora_dora", base, x, [("default", LoraConfig(
        r=2, lora_alpha=4, target_modules=["conv1", "conv2"], use_dora=True, init_lora_weights=False))],
        "DoRA r=2 alpha=4 on both Conv2d")


MLP_CASES = ["lora_mlp_basic", "lora_mlp_rslora", "lora_mlp_dora", "ia3_mlp"]


def mlp():
    src = os.path.join(VECTORS, MLP_CASES[0])
    sd = load_file(os.path.join(src, "base.safetensors"))
    for c in MLP_CASES[1:]:
        sd2 = load_file(os.path.join(VECTORS, c, "base.safetensors"))
        assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd), c
    base = MLP()
    base.load_state_dict(sd)
    base.eval()
    x = load_file(os.path.join(src, "input.safetensors"))["x"]
    d = model_folder("mlp", base, x, "the vectors' MLP (model.json of tests/data/vectors/lora_mlp_basic) as a plain "
                     "nn.Module with that case's base weights and input",
                     {"source": f"base.safetensors and input.safetensors copied from tests/data/vectors/{MLP_CASES[0]} "
                                f"(identical in {', '.join(MLP_CASES[1:])})"})
    # the vectors were computed on another machine: last-bit differences (~1e-8) are expected
    yb = load_file(os.path.join(src, "output_base.safetensors"))["output"]
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    meta["checks"]["maxdiff_output_base_vs_vectors_case_output_base"] = _maxdiff(_fwd(base, x), yb)
    assert meta["checks"]["maxdiff_output_base_vs_vectors_case_output_base"] <= ATOL
    _json(meta_path, meta)
    for c in MLP_CASES:
        cfg = json.load(open(os.path.join(VECTORS, c, "adapter_config.json")))
        adapter_case(d, c, base, x, [("default", None)],
                     f"tests/data/vectors/{c} ({cfg['peft_type']}) on the TorchScript export of its base model",
                     from_dirs={"default": os.path.join(VECTORS, c)}, vectors_case=c)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if os.environ.get("PYTHONHASHSEED") != "0":
        sys.exit("set PYTHONHASHSEED=0")
    gpt2()
    cnn()
    mlp()
