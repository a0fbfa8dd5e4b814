"""Run by tests/test_interop.py in the separate sae-lens environment (never imported by our tests).

``python saelens_check.py SPEC.json`` reads ``{"repo": ..., "cases": [{"dir", "x", "codes", "recon"}]}``
(``x``/``codes``/``recon``: .npy files with our JAX engine's raw-unit outputs) and prints one JSON
object: per case, the class ``sae_lens.SAE.load_from_disk`` returns, the relative errors of its
encode/decode against ours, whether ``fold_W_dec_norm()`` raised (and the error after folding), and
the same for :class:`softsae_jax.torch_module.SaeModule`; for SoftSAE exports, whether loading failed
before :func:`softsae_jax.torch_module.register_with_sae_lens` and worked after it.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
  import numpy as np
  import torch
  import sae_lens
  from sae_lens import SAE

  spec = json.load(open(sys.argv[1]))
  sys.path.insert(0, spec["repo"])
  out = {"sae_lens_version": sae_lens.__version__, "jax_imported": False, "cases": []}

  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

  for case in spec["cases"]:
    x = torch.from_numpy(np.load(case["x"]))
    codes, recon = np.load(case["codes"]), np.load(case["recon"])
    res: dict = {"dir": case["dir"]}
    if case.get("softsae"):
      try:
        SAE.load_from_disk(case["dir"])
        res["loads_before_register"] = True
      except Exception as e:  # noqa: BLE001
        res["loads_before_register"] = False
        res["error_before_register"] = type(e).__name__
      from softsae_jax import torch_module

      first = torch_module.register_with_sae_lens()
      res["register_idempotent"] = torch_module.register_with_sae_lens() == first
    sae = SAE.load_from_disk(case["dir"])
    res["class"] = type(sae).__name__
    with torch.no_grad():
      c = sae.encode(x)
      res["codes_rel"] = rel(c, codes)
      res["recon_rel"] = rel(sae.decode(c), recon)
      res["support_equal"] = bool(np.array_equal(c.numpy() != 0, codes != 0))
      try:
        sae.fold_W_dec_norm()
        res["fold_raised"] = None
        res["recon_rel_after_fold"] = rel(sae.decode(sae.encode(x)), recon)
      except Exception as e:  # noqa: BLE001
        res["fold_raised"] = f"{type(e).__name__}: {e}"
    from softsae_jax.torch_module import SaeModule

    mod = SaeModule.from_dir(case["dir"])
    with torch.no_grad():
      res["module_codes_rel"] = rel(mod.encode(x), codes)
      res["module_recon_rel"] = rel(mod(x), recon)
    out["cases"].append(res)
  out["jax_imported"] = "jax" in sys.modules
  print(json.dumps(out))


if __name__ == "__main__":
  main()
