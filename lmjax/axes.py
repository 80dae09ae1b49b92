"""Logical axis names shared by the model, the sharding rules and the tests.

Shape-letter legend used in tensor names throughout lmjax (e.g. ``x_BLD``):
  B  batch                 L  sequence length (query)   S  sequence length (key/value)
  D  model (embed) width   H  attention heads           K  per-head width
  F  MLP hidden width      V  vocabulary                N  layers (scan axis)
  C  classes

Model code tags every parameter and a few activations with these names; only
``lmjax/sharding.py`` maps them to mesh axes. This module imports nothing from lmjax.
"""

BATCH = 'batch'
LENGTH = 'length'
EMBED = 'embed'
HEADS = 'heads'
KV = 'kv'  # per-head width
MLP = 'mlp'
VOCAB = 'vocab'
LAYERS = 'layers'
CLASSES = 'classes'

# Activations use separate names so their layout can differ from the parameters'
# (e.g. FSDP shards the EMBED dim of weights but never of activations).
ACT_BATCH = 'activation_batch'
ACT_LENGTH = 'activation_length'
ACT_EMBED = 'activation_embed'
ACT_HEADS = 'activation_heads'
ACT_MLP = 'activation_mlp'
ACT_VOCAB = 'activation_vocab'
