"""The one family of user errors (imports nothing; no jax, no torch).

Every error a user can fix (bad data, bad config, a wrong workdir, a bad export flag) is a
:class:`UserError`. Each module keeps its own subclass next to the code that raises it
(``config.ConfigError``, ``shards.DataError``, ``trainer.WorkdirError``,
``checkpoint.CheckpointError``, ``bridge.ExportError``); the ``softsae`` command line catches
``UserError`` once, for every command (in :mod:`softsae_jax.cli`). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
  """An error whose message is one line a user can act on.

  The message names the file, row, key or flag at fault and what was expected. The CLI prints
  ``error: <message>`` on stderr and exits with status 1.
  """
