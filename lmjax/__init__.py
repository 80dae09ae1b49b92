"""lmjax: self-supervised pretraining of language models in JAX/Flax."""

from lmjax import hostmem as _hostmem

# `pip install 'lmjax[tpu]'` (and '[test]') put libtpu on CPU machines too, for lmjax.aot; without a TPU
# attached, JAX would probe for one and print a page of libtpu's errors before falling back to the CPU.
_hostmem.cpu_when_no_tpu()
