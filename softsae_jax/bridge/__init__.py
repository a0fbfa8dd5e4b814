"""PyTorch export bridge: run a transformers model and write ``softsae-activations/1`` shards.

This is the only part of softsae_jax that uses torch, and it imports torch and transformers lazily,
inside functions, so ``import softsae_jax.bridge.export`` stays cheap and works without them.
The entry points are :func:`softsae_jax.bridge.export.add_arguments` and
:func:`softsae_jax.bridge.export.run` (used by ``softsae export``), and
``python -m softsae_jax.bridge.export``. Nothing is re-exported here on purpose: importing the
``export`` submodule from this file would make ``python -m softsae_jax.bridge.export`` warn.

Modules:
  export: the command line (flags, resume, the row loop, the manifest).
  inputs: documents and images from disk, and the token windows (no torch).
  vocab: display strings for token ids (no torch).
  models: loading the model and reading one block's output (torch, imported lazily).

Every problem a user can fix (a bad model name, a layer out of range, a missing input file, flags
that do not fit the model, an ``--out`` holding something else) is an :class:`ExportError`, whose
message is one line naming the flag or file; ``softsae export`` prints it as ``error: ...``.
"""

from softsae_jax.errors import UserError


class ExportError(UserError):
  """A user error of the export bridge; the message is one line naming the flag or file at fault."""
