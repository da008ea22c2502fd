"""Times a LoRA training step in Python PEFT for bench/bench_training.cpp's two models, on the same LibTorch.

Runs in the reference environment (the workplace's reference/README.md: Debian's python3-torch 1.13.1 and a git
checkout of PEFT), with LibTorch's default threads, as the C++ benchmark runs (the same library picks the same
number in both: one intra-op thread on the 2-vCPU VM, while OpenBLAS starts one thread per core):

    . $REF/env.sh && $PY bench/python_training.py

Prints one JSON object: steps per second of each model (the median of 5 runs of N steps, after warm-up steps), and
how many forward + backward passes per second the frozen base model alone runs (the floor of a LoRA step).
Record the figures in bench/python_reference.h (kTrain*): the C++ benchmark reports its speed against them.

The models, identical in bench_training.cpp:
- "classifier": examples/finetune_fashion_mnist.cpp's MLP (784 -> 256 -> 128 -> 10), LoRA r=8 alpha=16 on fc1 and
  fc2, the head trained as modules_to_save, AdamW(lr 2e-3), cross-entropy on a batch of 128 images;
- "llama": bench/llama_shaped.h's tree, 4 layers, hidden 512, intermediate 1376 (bias-free Linears, weights
  N(0, 0.02); per layer x += o(q(x) + k(x) + v(x)); x += down(gate(x) * up(x))), LoRA r=16 alpha=32 on q_proj and
  v_proj, AdamW(lr 1e-3), loss mean(y^2) on a (4, 64, 512) batch.
"""
import json
import statistics
import sys
import time

import torch
from torch import nn

import peft


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, hidden, intermediate):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, name, nn.Linear(hidden, hidden, bias=False))
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.mlp.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.mlp.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        a = self.self_attn
        x = x + a.o_proj(a.q_proj(x) + a.k_proj(x) + a.v_proj(x))
        return x + self.mlp.down_proj(self.mlp.gate_proj(x) * self.mlp.up_proj(x))


class LlamaShaped(nn.Module):
    def __init__(self, layers=4, hidden=512, intermediate=1376):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(Block(hidden, intermediate) for _ in range(layers))
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.02)

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x)
        return x


def rate(step, steps, warmup=3, runs=5):
    """Calls of `step` per second: the median of `runs` runs of `steps` calls, after `warmup` calls."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def steps_per_second(model, optimizer, x, loss_fn, steps):
    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(x))
        loss.backward()
        optimizer.step()

    return rate(step, steps)


def base_passes_per_second(model, x, loss_fn, steps):
    """The frozen model's forward and backward to its input, as bench_training.cpp's floor (no adapter, no optimizer)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    x = x.clone().requires_grad_(True)

    def step():
        loss_fn(model(x)).backward()
        x.grad = None

    return rate(step, steps)


def main():
    # --threads N: torch's intra-op threads (default: LibTorch's own choice, which the C++ benchmark keeps too).
    # OpenBLAS keeps one thread per core unless OMP_NUM_THREADS (or OPENBLAS_NUM_THREADS) is set before the start:
    # run with OMP_NUM_THREADS=N to compare with C++ at N threads. Forcing torch to one thread per core here while
    # OpenBLAS also ran one per core (as this script once did) oversubscribed the cores and made Python ~3x slower
    # than its default.
    if len(sys.argv) == 3 and sys.argv[1] == "--threads":
        torch.set_num_threads(int(sys.argv[2]))
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "peft": peft.__version__, "threads": torch.get_num_threads()}

    classifier = peft.get_peft_model(
        Classifier(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["fc1", "fc2"], modules_to_save=["head"]))
    classifier.train()
    images, labels = torch.randn(128, 784), torch.randint(0, 10, (128,))
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=2e-3)
    results["classifier_steps_per_s"] = steps_per_second(
        classifier, optimizer, images, lambda y: nn.functional.cross_entropy(y, labels), steps=200)

    llama = peft.get_peft_model(LlamaShaped(), peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    llama.train()
    tokens = torch.randn(4, 64, 512)
    optimizer = torch.optim.AdamW([p for p in llama.parameters() if p.requires_grad], lr=1e-3)
    results["llama_steps_per_s"] = steps_per_second(llama, optimizer, tokens, lambda y: y.pow(2).mean(), steps=10)
    results["classifier_base_fwd_bwd_per_s"] = base_passes_per_second(
        Classifier(), images, lambda y: nn.functional.cross_entropy(y, labels), steps=200)
    results["llama_base_fwd_bwd_per_s"] = base_passes_per_second(
        LlamaShaped(), tokens, lambda y: y.pow(2).mean(), steps=10)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
