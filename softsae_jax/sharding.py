"""Sharding as data: a mesh, a small logical-axis rule table, and the NamedShardings they give a pytree.

Every array leaf of the training state is named by its path (``params.w_enc``,
``opt_state[2][0].mu.extra.w_k1``, ``since_fired_F``, ...). :data:`RULES` maps the leaf's *name* to
its logical axes, and :data:`LOGICAL_TO_MESH` maps logical axes to mesh axes, in the spirit of
big_vision's regex rule table and flax's logical partitioning. Adam's moments therefore shard like
the parameters they track, and a new parameter only needs a rule if it has a latent dimension.

Mesh axes are ``("data", "model")``: batches split rows over ``data``; latent-sized dimensions (F)
map to ``model``. With ``model = 1`` (the default) every state leaf is replicated and the batch is
split over all devices: plain data parallelism.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "model")

# logical axis -> mesh axis (None: replicated along that dimension).
LOGICAL_TO_MESH: dict[str, str | None] = {"batch": "data", "latent": "model", "embed": None}

# (regex matched against the leaf's last name, logical axes of its dimensions); first match wins.
RULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    (r"^(w_enc|w_k1)$", ("embed", "latent")),  # [D, F]
    (r"^w_dec$", ("latent", "embed")),  # [F, D]
    (r"^(b_enc|b_k1|w_k2|threshold|since_fired_F)$", ("latent",)),  # [F]
    (r".*", None),  # everything else (b_dec, scalars, step, key, ...): replicated
)


def make_mesh(data: int = 0, model: int = 1, devices=None) -> Mesh:
  """A ``("data", "model")`` mesh; ``data=0`` means all the devices ``model`` leaves.

  Axis types are Auto (GSPMD propagation), the behaviour this library's step relies on.

  Examples:
    >>> make_mesh().shape["model"]
    1
  """
  devices = list(jax.devices() if devices is None else devices)
  if model < 1 or data < 0:
    raise ValueError(f"Expected mesh.data >= 0 and mesh.model >= 1, got data={data}, model={model}")
  if data == 0:
    if len(devices) % model:
      raise ValueError(f"mesh.model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if data * model > len(devices):
    raise ValueError(f"mesh {data}x{model} needs {data * model} devices; {len(devices)} are available")
  grid = np.asarray(devices[:data * model]).reshape(data, model)
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def _leaf_name(path) -> str:
  last = path[-1] if path else None
  for attr in ("name", "key"):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return ""


def logical_axes(name: str) -> tuple[str, ...] | None:
  """The logical axes of a state leaf called ``name`` (None: replicated).

  Examples:
    >>> logical_axes("w_dec"), logical_axes("b_dec")
    (('latent', 'embed'), None)
  """
  for pattern, axes in RULES:
    if re.search(pattern, name):
      return axes
  return None


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """The PartitionSpec of one leaf; a leaf whose rank does not match its rule is replicated."""
  axes = logical_axes(name)
  if axes is None or len(axes) != len(shape):
    return P()
  mesh_axes = []
  for axis, size in zip(axes, shape):
    m = LOGICAL_TO_MESH[axis]
    if m is not None and size % mesh.shape[m]:
      raise ValueError(f"{name}: dimension {axis}={size} is not divisible by mesh.{m}={mesh.shape[m]}")
    mesh_axes.append(m if m is not None and mesh.shape[m] > 1 else None)
  return P(*mesh_axes)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """A NamedSharding for every array leaf of ``tree`` (arrays or ShapeDtypeStructs), by the rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(_leaf_name(path), tuple(x.shape), mesh)), tree)


def batch_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(rows [B, D], row mask [B]) shardings: rows split over 'data'."""
  return NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data"))


def process_rows(rows: NamedSharding, batch_size: int) -> slice:
  """The rows of a [batch_size, ...] global batch that this process's devices hold, as one range.

  With a 'model' axis spanning processes, several processes hold (and read) the same rows.
  """
  spans = {index[0].indices(batch_size)[:2] for index in rows.addressable_devices_indices_map((batch_size, 1)).values()}
  lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
  if sum(b - a for a, b in spans) != hi - lo and len(spans) > 1:
    raise ValueError(f"this process's devices hold non-contiguous rows {sorted(spans)} of the batch; "
                     "order the mesh devices by process")
  return slice(lo, hi)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
