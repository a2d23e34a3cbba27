"""args_fast build. (Placeholder: the csrc/ CMake build is added by the compiled-engine work.)"""
from setuptools import find_packages, setup

setup(
    name="args_fast",
    version="0.1.0",
    description="Fast, correct ARGS (Alignment as Reward-Guided Search) decoding",
    packages=find_packages(include=["args_fast", "args_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4,<2.14", "transformers>=5.0,<6", "numpy", "tqdm"],
    extras_require={"dev": ["pytest", "pytest-benchmark"], "triton": ["triton"]},
    entry_points={"console_scripts": ["args-fast=args_fast.cli:main"]},
)
