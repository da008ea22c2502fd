"""Generates this project's own reference cases with Python PEFT, in the format of tests/data/vectors.

The shared reference set (tests/data/vectors, copied from the workplace) lacks cases for some methods and
options; they are made here with the same machinery that made it: the reference environment's gen_vectors.py
and specmodel.py (the workplace's reference/README.md says how to set that environment up: Debian's
python3-torch 1.13.1 and git checkouts of PEFT 5d602fdb..., accelerate and huggingface_hub).

Each file defs/<topic>.py defines cases with `case(name, spec_fn, adapters, description, **options)` exactly as
gen_vectors.py does (`S` is specmodel, `peft` is imported); write one file per method so that methods added
in parallel never touch the same file. Run:

    . $REF/env.sh; export PYTHONHASHSEED=0
    $PY tests/data/cases/generate.py [case-name-substring ...]

Every selected case is rewritten in tests/data/cases/<case>/; two runs give byte-identical files. The C++
tests read tests/data/vectors and tests/data/cases alike (tests/support/vectors.h).
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["VEC_OUT"] = HERE


def reference_scripts():
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        candidate = os.path.join(os.path.dirname(entry), "scripts")
        if os.path.exists(os.path.join(candidate, "gen_vectors.py")):
            return candidate
    sys.exit("gen_vectors.py not found: source the reference environment's env.sh first")


sys.path.insert(0, reference_scripts())
import gen_vectors as G  # noqa: E402  (registers the shared set's cases; they are dropped below)
import peft  # noqa: E402
import specmodel as S  # noqa: E402

G.CASES.clear()
for path in sorted(glob.glob(os.path.join(HERE, "defs", "*.py"))):
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), {"case": G.case, "S": S, "peft": peft, "torch": G.torch, "G": G})

selection = sys.argv[1:]
failed = False
for name, spec in G.CASES.items():
    if selection and not any(s in name for s in selection):
        continue
    try:
        meta = G.run_case(name, spec)
        print(f"{name}: ok", flush=True)
    except Exception as e:  # report every case, fail at the end
        failed = True
        print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
sys.exit(1 if failed else 0)
