from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("hf_rskip/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="hf_rskip",
    version=version["__version__"],
    description="Recursive skip connections with layer normalization (Liu et al., COLING 2020) as Hugging Face models",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # the library only: experiments/ and scripts/ run from a source checkout
    packages=find_packages(include=["hf_rskip", "hf_rskip.*"]),
    # the evaluate metric module is loaded by path (evaluate.load), not imported: data of the package
    package_data={"hf_rskip": ["model_cards/*.md", "metrics/translation_scores/*.py"]},
    python_requires=">=3.10",
    # Install a CPU build of torch first where a CUDA build is not wanted (see README).
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "numpy",
    ],
    extras_require={
        "train": [
            "accelerate>=1.10",
            "datasets>=3.0",
            "tokenizers>=0.21",
            "sacrebleu>=2.4",
            "evaluate>=0.4",
            "tensorboard",
            "matplotlib",
            "tqdm",
            "rich",
            "jinja2",
            "scikit-learn",
            "pillow",
        ],
        # triton: the fused recursive norm's tests run its kernels on CPU through Triton's interpreter. It depends
        # on nothing (torch is not pulled in or changed); wheels exist for Linux x86_64 and aarch64 only.
        "dev": [
            "pytest>=8", "pytest-xdist", "sentencepiece", "pyyaml",
            "triton; platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')",
        ],
    },
)
