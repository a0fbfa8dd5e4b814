"""A thin orbax ``CheckpointManager`` wrapper: the train state, the loader position and the config.

Each checkpoint ``WORKDIR/checkpoints/<step>/`` holds three items: ``state`` (the whole
:class:`~softsae_jax.types.TrainState` pytree), ``data`` (the loader's JSON state: seed, step, rows
read) and ``config`` (the resolved config as JSON), so a checkpoint alone is enough to evaluate.
orbax writes to a temporary directory and renames it when complete, so a run killed mid-save leaves
the previous checkpoint as the latest complete one (``cleanup_tmp_directories`` removes the debris).
Saves are synchronous: SAE states are small next to the step time, and a save that returned is on
disk, which keeps the kill-and-resume story simple.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from softsae_jax.errors import UserError
from softsae_jax.types import TrainState


class CheckpointError(UserError):
  pass


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
        enable_async_checkpointing=False)
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict[str, Any], config: dict[str, Any]) -> None:
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def restore_meta(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, data state) of a checkpoint, without the arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    out = self._mgr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore(),
                                                          config=ocp.args.JsonRestore()))
    return out["config"], out["data"]

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores into ``abstract_state`` (ShapeDtypeStructs with shardings; see ``jax.eval_shape``).

    Raises:
      CheckpointError: the checkpoint's tree does not match (e.g. written by another version's layout).
    """
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                            data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(f"{self.directory}/{step}: the checkpoint does not match this version's state layout "
                            f"({first[:200]}); retrain, or use the softsae_jax version that wrote it") from None
    return out["state"], out["data"]

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def open_run(workdir: str, step: int | None = None) -> tuple[Checkpointer, int, dict[str, Any]]:
  """A workdir's checkpoints, read-only: (checkpointer, the step (default: the latest), its config dict).

  The caller closes the checkpointer. Raises CheckpointError naming the path: no workdir, no
  checkpoints/ directory, no (such) complete checkpoint.
  """
  if not os.path.isdir(workdir):
    raise CheckpointError(f"workdir {workdir} does not exist")
  ckdir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckdir):
    raise CheckpointError(f"{workdir} has no checkpoints/ directory: expected a workdir written by `softsae train`")
  ck = Checkpointer(ckdir, read_only=True)
  try:
    found = ck.latest_step() if step is None else step
    if found is None or found not in ck.all_steps():
      raise CheckpointError(f"{ckdir} holds no complete checkpoint" + ("" if step is None else f" at step {step}"))
    cfg_dict, _ = ck.restore_meta(found)
  except BaseException:
    ck.close()
    raise
  return ck, found, cfg_dict


def abstract_like(state: TrainState, shardings) -> TrainState:
  """ShapeDtypeStructs of ``state`` with ``shardings`` (one sharding for every leaf, or a matching
  tree of them) as restore targets."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), state)
