"""TrainState (arrays only) and its sharded initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lmjax import sharding


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training; functions live outside it."""
  step: jax.Array
  params: Any
  opt_state: Any


def _boxed_init(model: nn.Module, tx: optax.GradientTransformation, example_BL) -> Callable:
  """Init fn whose params (and optimizer moments) still carry logical-name boxes."""
  def init(rng):
    params = model.init(rng, example_BL)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def abstract_state(model, tx, example_BL, mesh):
  """(abstract TrainState with shardings attached, its NamedSharding tree); no FLOPs, no memory."""
  boxed = jax.eval_shape(_boxed_init(model, tx, example_BL), jax.random.key(0))
  shardings = sharding.logical_to_shardings(boxed, mesh)
  shapes = nn.meta.unbox(boxed)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return abstract, shardings


def create(model, tx, example_BL, mesh, rng):
  """Initialise the state directly into its shardings: nothing is materialised whole."""
  abstract, shardings = abstract_state(model, tx, example_BL, mesh)
  init = _boxed_init(model, tx, example_BL)
  with sharding.activate(mesh):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, abstract, shardings
