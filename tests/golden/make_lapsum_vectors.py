"""Builds tests/golden/lapsum_topk_vectors.npz from the LapSum authors' CPU kernel, in float64.

The reference is the LapSum soft top-k CPU kernel (``soft_topk.cpp``) that the SoftSAE authors
vendor in their repository (GitHub St0pien/SoftSAE, ``lapsum/lapsum/topk/cpu/soft_topk.cpp``; the
same path in the LapSum authors' repository, GitHub gmum/LapSum). This script compiles that
one file as a PyTorch C++ extension (CPU only: no CUDA toolkit needed) and calls it the way the
authors' Python wrapper (``lapsum/topk/extension/soft_topk.py``) does with ``largest=True``:
the scale is passed as the signed value ``-|alpha|``, ``k`` as a ``(B, 1)`` tensor, the weights come
back as ``(B, 1, F)`` and the VJP takes the upstream gradient as ``(B, 1, F)``. (The wrapper itself is
not imported because it also imports the CUDA extension.)

Usage (from the repository root; needs ``torch`` and a C++ compiler):

    git clone https://github.com/St0pien/SoftSAE ../SoftSAE
    python tests/golden/make_lapsum_vectors.py ../SoftSAE
    # or any checkout of gmum/LapSum:
    python tests/golden/make_lapsum_vectors.py ../LapSum --out lapsum_topk_vectors.npz

``--inputs-from FILE.npz`` keeps the inputs (x, k, alpha, cotangent) of an existing file and only
recomputes the kernel's outputs, printing how far the file's outputs are from the kernel's: this
checks the committed goldens against the kernel. Without it, fresh inputs of the same layout are
drawn from ``--seed`` (see ``CASES``): the same keys, shapes, scales and input kinds as the committed
file, but not its exact random values.

Note: the kernel's ``forward``/``vjp`` take ``alpha`` as a C++ ``float``, so even in float64 the
kernel works with ``alpha`` rounded to float32 (relative change <= 6e-8); the file stores the nominal
value.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

# (rows B, entries F, alpha, input kind, integer k). Kinds: "normal" = N(0, 1) entries; "relu" =
# s * ReLU(N(0, 1) - c) with a per-row scale s and shift c, so rows have many exact zeros (ties) and
# very different numbers of positive entries, as SoftSAE's post-ReLU scores do; "scaled" = N(0, 1)
# rows each multiplied by 10**u, u ~ U(-3, 3), so one alpha is very soft for some rows and very
# hard for others.
CASES = (
    (8, 64, 1.0, "normal", False),
    (8, 512, 0.1, "normal", False),
    (8, 512, 0.01, "normal", False),
    (8, 512, 1e-3, "normal", False),
    (8, 1024, 1e-4, "relu", False),
    (8, 1024, 0.99, "relu", False),
    (8, 1024, 0.05, "relu", False),
    (8, 256, 0.1, "scaled", False),
    (2, 4096, 0.01, "normal", False),
    (2, 4096, 1e-4, "relu", False),
    (8, 1024, 1e-4, "relu", True),  # integer k: the threshold sits inside a gap between two entries
    (8, 512, 0.01, "normal", True),
)

KERNEL_PATHS = (
    os.path.join("lapsum", "lapsum", "topk", "cpu", "soft_topk.cpp"),  # St0pien/SoftSAE or gmum/LapSum
    os.path.join("lapsum", "topk", "cpu", "soft_topk.cpp"),  # their lapsum/ package folder
)


def find_kernel(checkout: str) -> str:
  for rel in KERNEL_PATHS:
    path = os.path.join(checkout, rel)
    if os.path.isfile(path):
      return path
  sys.exit(f"no LapSum CPU kernel under {checkout}: expected one of {', '.join(KERNEL_PATHS)} "
           "(a checkout of St0pien/SoftSAE or gmum/LapSum)")


def load_kernel(cpp_path: str, build_dir: str):
  """Compiles soft_topk.cpp into an importable extension with ``forward`` and ``vjp``."""
  from torch.utils import cpp_extension

  src = os.path.join(build_dir, "soft_topk.cpp")
  with open(cpp_path, encoding="utf-8") as f:
    text = f.read()
  # The authors' setup.py makes the same substitution for PyTorch >= 2.6 (the dispatch macros no
  # longer take Tensor::type()); scalar_type() works in every PyTorch version.
  with open(src, "w", encoding="utf-8") as f:
    f.write(text.replace(".type()", ".scalar_type()"))
  return cpp_extension.load(name="lapsum_soft_topk_cpu", sources=[src], build_directory=build_dir,
                            extra_cflags=["-O2"], verbose=False)


def kernel_case(ext, x_BF: np.ndarray, k_B: np.ndarray, alpha: float, v_BF: np.ndarray):
  """(weights_BF, grad_x_BF, grad_k_B) of the kernel, largest=True, float64."""
  import torch

  signed_alpha = -abs(float(alpha))  # what the wrapper passes for largest=True
  x = torch.from_numpy(np.ascontiguousarray(x_BF, np.float64))
  k = torch.from_numpy(np.ascontiguousarray(k_B, np.float64)[:, None])
  threshold_B1, prob_B1F = ext.forward(x, k, signed_alpha)
  v = torch.from_numpy(np.ascontiguousarray(v_BF, np.float64)[:, None, :])
  grad_x, grad_k, _ = ext.vjp(x, threshold_B1, v, signed_alpha)
  return prob_B1F[:, 0, :].numpy(), grad_x.numpy(), grad_k[:, 0].numpy()


def draw_inputs(rng: np.random.Generator, num_b: int, num_f: int, kind: str, integer_k: bool):
  """(x_BF, k_B, v_BF) for one case; 0 < k < F in every row."""
  z = rng.standard_normal((num_b, num_f))
  if kind == "normal":
    x = z
  elif kind == "scaled":
    x = z * 10.0 ** rng.uniform(-3.0, 3.0, size=(num_b, 1))
  elif kind == "relu":
    scale = rng.uniform(0.2, 2.0, size=(num_b, 1))
    shift = rng.uniform(0.0, 1.5, size=(num_b, 1))  # 7% to 50% of a row's entries are positive
    x = scale * np.maximum(z - shift, 0.0)
  else:
    raise ValueError(f"unknown input kind {kind!r}")
  # Targets in the range SoftSAE uses (k well below F), wider for the small case.
  k_hi = num_f - 1 if num_f <= 64 else (0.12 if kind == "relu" else 0.2) * num_f
  k = rng.uniform(1.0, k_hi, size=num_b)
  if integer_k:
    k = np.maximum(np.round(k), 1.0)
  v = rng.standard_normal((num_b, num_f))
  return x, k, v


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("checkout", help="a checkout of St0pien/SoftSAE or gmum/LapSum")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "lapsum_topk_vectors.npz"))
  ap.add_argument("--seed", type=int, default=0, help="seed for fresh inputs")
  ap.add_argument("--inputs-from", help="reuse the inputs of this npz; only the outputs are recomputed")
  a = ap.parse_args()

  cpp = find_kernel(a.checkout)
  build_dir = tempfile.mkdtemp(prefix="lapsum_build_")
  try:
    ext = load_kernel(cpp, build_dir)
    if a.inputs_from:
      old = np.load(a.inputs_from)
      inputs = [(old[f"case{i}_x"], old[f"case{i}_k"], float(old[f"case{i}_alpha"]), old[f"case{i}_cotangent"])
                for i in range(int(old["n_cases"]))]
    else:
      old = None
      rng = np.random.default_rng(a.seed)
      inputs = []
      for num_b, num_f, alpha, kind, integer_k in CASES:
        x, k, v = draw_inputs(rng, num_b, num_f, kind, integer_k)
        inputs.append((x, k, alpha, v))

    out = {"n_cases": np.asarray(len(inputs), np.int64)}
    for i, (x, k, alpha, v) in enumerate(inputs):
      w, gx, gk = kernel_case(ext, x, k, alpha, v)
      out.update({f"case{i}_x": np.asarray(x, np.float64), f"case{i}_k": np.asarray(k, np.float64),
                  f"case{i}_alpha": np.asarray(alpha, np.float64), f"case{i}_weights": w,
                  f"case{i}_cotangent": np.asarray(v, np.float64), f"case{i}_grad_x": gx,
                  f"case{i}_grad_k": gk})
      line = (f"case {i}: B={x.shape[0]} F={x.shape[1]} alpha={alpha:g} "
              f"max|sum(w) - k|={np.max(np.abs(w.sum(1) - k)):.1e}")
      if old is not None:
        rel = lambda a_, b_: np.linalg.norm(a_ - b_) / max(np.linalg.norm(b_), 1e-300)  # noqa: E731
        line += (f"  vs file: weights {rel(w, old[f'case{i}_weights']):.1e}, "
                 f"grad_x {rel(gx, old[f'case{i}_grad_x']):.1e}, grad_k {rel(gk, old[f'case{i}_grad_k']):.1e}")
      print(line)
    np.savez_compressed(a.out, **out)
    print(f"wrote {a.out}")
  finally:
    shutil.rmtree(build_dir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
