# Poly (Polytropon) and MHR: each layer mixes n_skills LoRAs (in n_splits heads) with weights a router gives per task.
# Python's Poly layers need task_ids in every forward (PolyModel.forward(task_ids=...) passes them by pre-hooks);
# gen_vectors.py runs plain forwards, so for these cases the Poly layer's forward takes POLY_TASK_IDS when it gets
# none. The task ids are saved as task_ids.safetensors ("task_ids"); output_train.safetensors is a training-mode
# forward (the router samples a RelaxedBernoulli) right after torch.manual_seed(99).
import copy as _copy
import os as _os

from safetensors.torch import save_file as _save_file
import peft.tuners.poly.layer as _poly_layer

POLY_TASK_IDS = torch.tensor([1, 0, 2])
_poly_forward = _poly_layer.Linear.forward


def _forward_with_task_ids(self, x, *args, task_ids=None, **kwargs):
    return _poly_forward(self, x, *args, task_ids=POLY_TASK_IDS if task_ids is None else task_ids, **kwargs)


_poly_layer.Linear.forward = _forward_with_task_ids


def poly_mlp_spec():
    """S.mlp_spec with a (batch 3, sequence 4, 10) input: Poly's layers multiply batched matrices (bmm)."""
    spec = S.mlp_spec()
    spec["input"]["shape"] = [3, 4, 10]
    return spec


def poly_extra(d, spec, base, model, x, adapters, psd, outs, meta):
    _save_file({"task_ids": POLY_TASK_IDS.clone()}, _os.path.join(d, "task_ids.safetensors"), metadata={"format": "pt"})
    meta["files"]["task_ids.safetensors"] = "the per-sample task ids every Poly forward of this case used"
    m = _copy.deepcopy(model)
    peft.functional.set_adapter(m, adapters[0][0])
    m.train()
    torch.manual_seed(99)
    with torch.no_grad():
        y = m(x)
    _save_file({"output": y.contiguous()}, _os.path.join(d, "output_train.safetensors"), metadata={"format": "pt"})
    meta["files"]["output_train.safetensors"] = (f"training-mode forward with adapter '{adapters[0][0]}' active, "
                                                 "right after torch.manual_seed(99)")


case("poly_mlp", poly_mlp_spec,
     [("default", peft.PolyConfig(r=2, n_tasks=3, n_skills=4, target_modules=["lin0", "lin1"], init_weights=False)),
      ("other", peft.PolyConfig(r=3, n_tasks=4, n_skills=2, n_splits=2, target_modules=["lin1", "lin2"],
                                init_weights=False))],
     "Poly (4 skills, 3 tasks) and a second MHR adapter (2 splits); task ids [1, 0, 2] (see task_ids.safetensors)",
     extra=poly_extra)
case("poly_mhr_default_init", poly_mlp_spec,
     [("default", peft.PolyConfig(r=4, n_tasks=3, n_skills=3, n_splits=5, target_modules=["lin0", "lin1"]))],
     "Poly with MHR (5 splits), default init (B zero; perturbed); task ids [1, 0, 2]", extra=poly_extra)
def poly_blocks_spec():
    """S.blocks_spec under "encoder", with a (batch 3, sequence 2, 6) input."""
    spec = S.blocks_spec(root="encoder")
    spec["input"]["shape"] = [3, 2, 6]
    return spec


case("poly_blocks_exclude", poly_blocks_spec,
     [("default", peft.PolyConfig(r=2, n_tasks=3, n_skills=2, target_modules=["fc1", "fc2"], exclude_modules=["encoder.blocks.0.fc2"],
                                  init_weights=False))],
     "Poly with exclude_modules on the block model", extra=poly_extra)
