"""Interop with the PyTorch SAE ecosystem: export a workdir to other libraries' formats, import theirs.

* :func:`export_workdir`: ``saelens`` (SAELens v6 folder: SAELens, SAEBench, SAEDashboard, Neuronpedia,
  :mod:`softsae_jax.torch_module`) and ``dictionary_learning`` (``ae.pt`` + ``config.json``: the SoftSAE
  authors' SAEBench wrapper, dictionary_learning's loaders).
* :func:`import_to_workdir`: ``saelens``, ``sparsify``, ``gemmascope``, ``dictionary_learning`` into a
  new workdir that ``softsae eval/encode/report`` and :func:`softsae_jax.load` read.

Each format's layout, mapping and refusals are documented in its module (:mod:`.saelens`,
:mod:`.dictionary_learning`, :mod:`.external`); units and provenance in :mod:`.common`. The CLI is
``softsae convert`` (:mod:`softsae_jax.convert`).
"""

from __future__ import annotations

from typing import Any

from softsae_jax.interop.common import ConvertError, Imported, llm_metadata, provenance, read_trained, write_workdir

EXPORT_FORMATS = ("saelens", "dictionary_learning")
IMPORT_FORMATS = ("saelens", "sparsify", "gemmascope", "dictionary_learning")


def export_workdir(workdir: str, fmt: str, out: str, *, eval_data: str | None = None,
                   metadata: dict[str, Any] | None = None, batch_size: int = 1024) -> dict[str, Any]:
  """Exports the latest checkpoint of ``workdir`` as ``fmt`` into the new directory ``out``.

  Args:
    workdir: a ``softsae train`` (or imported) workdir.
    fmt: one of :data:`EXPORT_FORMATS`.
    out: the output directory; must not exist (or be empty).
    eval_data: saelens only: activations to measure each latent's firing frequency on
      (``sparsity.safetensors``, log10).
    metadata: language-model metadata overriding what the manifest gives (model_name, hook_name, ...).
    batch_size: rows per inference call for ``eval_data``.

  Returns:
    The written config (SAELens ``cfg.json`` or dictionary_learning ``config.json``).

  Raises:
    ConvertError (a UserError): unsupported arch/format combination, an existing ``out``, ...
  """
  from softsae_jax.interop import common

  if fmt not in EXPORT_FORMATS:
    raise ConvertError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
  common.check_new(out, "--out")
  if eval_data is not None and fmt != "saelens":
    raise ConvertError("--eval-data writes SAELens's sparsity.safetensors: only with --to saelens")
  t = read_trained(workdir)
  md = llm_metadata(t, metadata)
  block = provenance(t)
  if fmt == "saelens":
    from softsae_jax.interop import saelens

    sparsity = None
    if eval_data is not None:
      from softsae_jax.evaluate import load, scan
      from softsae_jax.shards import open_dataset

      model = load(workdir)
      ds = open_dataset(eval_data, expect_d_model=model.d_in)
      acc = scan(model, ds, batch_size=batch_size, skip_nonfinite=model.cfg.data.skip_nonfinite)
      sparsity = saelens.log10_density(acc.fire_F, acc.n)
    return saelens.export(t, out, metadata=md, block=block, sparsity_F=sparsity)
  from softsae_jax.interop import dictionary_learning

  return dictionary_learning.export(t, out, metadata=md, block=block)


def read_format(fmt: str, in_path: str) -> Imported:
  """Reads an SAE in format ``fmt`` (one of :data:`IMPORT_FORMATS`) without writing anything."""
  if fmt == "saelens":
    from softsae_jax.interop.saelens import import_
    return import_(in_path)
  if fmt == "dictionary_learning":
    from softsae_jax.interop.dictionary_learning import import_
    return import_(in_path)
  if fmt == "sparsify":
    from softsae_jax.interop.external import import_sparsify
    return import_sparsify(in_path)
  if fmt == "gemmascope":
    from softsae_jax.interop.external import import_gemmascope
    return import_gemmascope(in_path)
  raise ConvertError(f"unknown import format {fmt!r} (expected one of {', '.join(IMPORT_FORMATS)})")


def import_to_workdir(fmt: str, in_path: str, workdir: str) -> Imported:
  """Reads ``in_path`` as ``fmt`` and writes it as the new workdir ``workdir`` (refuses an existing one)."""
  from softsae_jax.interop import common

  common.check_new(workdir, "workdir")
  imp = read_format(fmt, in_path)
  write_workdir(workdir, imp)
  return imp


__all__ = ["EXPORT_FORMATS", "IMPORT_FORMATS", "ConvertError", "Imported", "export_workdir", "import_to_workdir",
           "read_format"]
