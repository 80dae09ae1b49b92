"""The one place that builds meshes and shardings.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with
parameters and optimizer state sharded), ``tensor`` (heads / MLP / vocabulary
split across devices). ``RULES`` maps the model's logical axis names
(``lmjax.axes``) to these mesh axes.
"""

from __future__ import annotations

import contextlib
import math
import os

import flax.linen as nn
import jax
from absl import logging
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmjax import axes

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch is split over every data-parallel axis

# (logical name, mesh axis or None), tried in order: a name takes the first rule whose
# mesh axes are not yet used by another dim of the same array. Parameters: FSDP
# shards EMBED; tensor parallelism shards HEADS / MLP / VOCAB, which fall back to
# FSDP where the mesh has no tensor axis (so biases are sharded too). Activations
# keep EMBED whole.
RULES = (
    (axes.BATCH, BATCH_AXES),
    (axes.LENGTH, None),
    (axes.EMBED, 'fsdp'),
    (axes.HEADS, 'tensor'),
    (axes.HEADS, 'fsdp'),
    (axes.KV, None),
    (axes.MLP, 'tensor'),
    (axes.MLP, 'fsdp'),
    (axes.VOCAB, 'tensor'),
    (axes.VOCAB, 'fsdp'),
    (axes.LAYERS, None),
    (axes.CLASSES, None),
    (axes.ACT_BATCH, BATCH_AXES),
    (axes.ACT_LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, 'tensor'),
    (axes.ACT_MLP, 'tensor'),
    (axes.ACT_VOCAB, 'tensor'),
)


def rules_for(mesh: Mesh, rules=RULES):
  """``rules`` without this mesh's size-1 axes, so that fallbacks apply (a size-1 axis shards nothing)."""
  def live(target):
    names = (target,) if isinstance(target, str) else tuple(target or ())
    kept = tuple(n for n in names if mesh.shape[n] > 1)
    return kept[0] if len(kept) == 1 else (kept or None)
  kept = [(name, live(target)) for name, target in rules]
  kept = [(name, target) for name, target in kept if target is not None]
  # A name left with no mesh axes maps to None: replicated.
  unmapped = dict.fromkeys(name for name, _ in rules if name not in {n for n, _ in kept})
  return tuple(kept) + tuple((name, None) for name in unmapped)


def cpu_device_count(wanted: int, micro_batch: int) -> int:
  """JAX CPU devices for this process: ``wanted`` (``mesh.cpu_devices``), or if 0 one per core, as
  many as divide the micro-batch so that it splits evenly across them."""
  if wanted:
    return wanted
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
  return max(d for d in range(1, cores + 1) if micro_batch % d == 0)


def split_cpu(count: int) -> bool:
  """Makes the CPU ``count`` JAX devices (data parallel over cores), if JAX's backends have not started.

  XLA:CPU splits each operation of one device's program across the cores, and
  for a small model that synchronisation costs more than the work: on 2 cores
  the nanoGPT-CPU-shaped train step ran 60 -> 44 ms as two single-core devices
  that all-reduce their gradients (docs/perf_notes.md). Only the CPU backend is
  affected (GPU/TPU hosts keep their accelerators). Left alone when the user
  already chose: ``--xla_force_host_platform_device_count`` in XLA_FLAGS or
  ``jax_num_cpu_devices`` set. Returns whether it set the count.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (no public "backends started?")
  if (count <= 1 or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')
      or jax.config.jax_num_cpu_devices >= 0 or xla_bridge.backends_are_initialized()):
    return False
  jax.config.update('jax_num_cpu_devices', count)
  return True


def split_cpu_for(config) -> bool:
  """``split_cpu`` with the count the config asks for: ``mesh.cpu_devices``, or one per core that
  divides the micro-batch (``train.batch_size // train.grad_accum_steps``)."""
  micro_batch = config.train.batch_size // max(config.train.grad_accum_steps, 1)
  return split_cpu(cpu_device_count(config.mesh.cpu_devices, micro_batch))


def mesh_from_config(mesh_config, devices=None) -> Mesh:
  """``make_mesh`` from the config's ``mesh`` section (``cpu_devices`` and ``cpu_hugepages`` act earlier,
  before JAX starts: ``split_cpu``, ``hostmem.reexec_with_hugepages``)."""
  return make_mesh(**{k: v for k, v in mesh_config.items() if not k.startswith('cpu_')}, devices=devices)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1, dcn_fsdp: int = 1,
              dcn_tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types.

  ``data``/``fsdp``/``tensor`` are sizes within one slice (ICI; one may be -1 to
  fill it). ``dcn_*`` split each axis further across slices (multi-slice TPU) or
  hosts (GPU nodes, which have no ``slice_index``); an axis's size is ``ici * dcn``.
  Slow DCN links should carry only ``data`` (or ``fsdp``) traffic.
  """
  devices = jax.devices() if devices is None else devices
  dcn = (dcn_data, dcn_fsdp, dcn_tensor)
  if any(s < 1 for s in dcn) or len(devices) % math.prod(dcn):
    raise ValueError(f'mesh: dcn_data={dcn_data} dcn_fsdp={dcn_fsdp} dcn_tensor={dcn_tensor} must be >= 1 '
                     f'and their product must divide the {len(devices)} devices; set --config.mesh.dcn_*')
  ici = _fill_sizes((data, fsdp, tensor), len(devices) // math.prod(dcn))
  # Linen's logical constraints need Auto axes (jax.make_mesh defaults to Explicit).
  auto = (AxisType.Auto,) * 3
  if math.prod(dcn) == 1:
    return jax.make_mesh(ici, MESH_AXES, axis_types=auto, devices=devices)
  return Mesh(device_grid(ici, dcn, devices), MESH_AXES, axis_types=auto)


def _fill_sizes(sizes, num_devices: int) -> tuple[int, ...]:
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh: at most one of data/fsdp/tensor may be -1, got {list(sizes)}')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(f'mesh: sizes data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} do not divide the '
                     f'{num_devices} devices of a slice; set --config.mesh.* so their product is {num_devices}')
  sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh: data*fsdp*tensor = {math.prod(sizes)} but a slice has {num_devices} devices; '
                     'set --config.mesh.* (one of them may be -1 to fill)')
  return sizes


def device_grid(ici: tuple[int, ...], dcn: tuple[int, ...], devices) -> np.ndarray:
  """Devices as an array of shape ``ici * dcn``: each slice's devices form a contiguous ``ici`` block.

  Slices are TPU slices (``slice_index``) or, where all devices share one slice
  (GPU and CPU hosts), processes.
  """
  by_process = len({getattr(d, 'slice_index', 0) for d in devices}) == 1
  granules = len({d.process_index if by_process else d.slice_index for d in devices})
  if granules != math.prod(dcn):
    kind = 'processes' if by_process else 'slices'
    raise ValueError(f'mesh: dcn_data*dcn_fsdp*dcn_tensor = {math.prod(dcn)} but there are {granules} '
                     f'{kind}; set --config.mesh.dcn_* so their product is the number of {kind}')
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process,
                                              allow_split_physical_axes=True)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=RULES):
  """Context under which model code's logical constraints resolve to ``mesh``."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for(mesh, rules)):
    yield


def logical_to_shardings(abstract_boxed_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a tree whose leaves carry ``nn.Partitioned`` names.

  A dim whose size the assigned mesh axes do not divide (e.g. 12 heads on a
  tensor axis of 8) stays whole, with a warning, rather than failing to compile.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules_for(mesh, rules))
  shapes = nn.meta.unbox(abstract_boxed_tree)
  return jax.tree.map(lambda sh, x: _fit(sh, x.shape, mesh), shardings, shapes)


def _fit(named: NamedSharding, shape, mesh: Mesh) -> NamedSharding:
  spec = tuple(named.spec) + (None,) * (len(shape) - len(named.spec))
  fitted = []
  for dim, target in zip(shape, spec):
    names = (target,) if isinstance(target, str) else tuple(target or ())
    if dim % math.prod(mesh.shape[n] for n in names):
      logging.warning('a dim of size %d does not divide over mesh axes %s: kept whole', dim, names)
      target = None
    fitted.append(target)
  return NamedSharding(mesh, P(*fitted))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(global_batch: int, mesh: Mesh):
  dp = data_parallel_size(mesh)
  if global_batch % dp or global_batch % jax.process_count():
    raise ValueError(f'train.batch_size={global_batch} must be divisible by the data-parallel size {dp} '
                     f'(mesh data*fsdp) and by the {jax.process_count()} processes; change '
                     '--config.train.batch_size or --config.mesh.*')


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble each process's local rows into one globally sharded batch."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
