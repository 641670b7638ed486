"""hvdtrain: Horovod-based data-parallel training for PyTorch and TensorFlow/Keras."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "hvdtrain" / "_version.py").read_text()).group(1)

setup(
    name="hvdtrain",
    version=VERSION,
    description="Data-parallel training on Horovod for PyTorch and Keras 3, with one callback system.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hvdtrain", "hvdtrain.*"]),
    include_package_data=True,
    package_data={"hvdtrain": ["templates/**/*", "templates/*/*", "templates/*/.*"]},
    install_requires=["numpy", "PyYAML", "tqdm"],
    extras_require={
        "torch": ["torch", "horovod"],
        "tensorflow": ["tensorflow", "horovod"],
        "logging": ["tensorboard", "matplotlib"],
        "mpi": ["mpi4py"],
        "mlflow": ["mlflow"],
    },
    entry_points={"console_scripts": ["hvdtrain=hvdtrain.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
