"""dropblock_det: DropBlock (Ghiasi, Lin, Le, NeurIPS 2018) for Detectron2's RetinaNet.

Detectron2 itself is deliberately *not* in install_requires: `pip install -e .` on a machine with a
Detectron2 built from source must not replace it. The registry build (sal-detectron2, CPython 3.10)
is available as the `detectron2` extra and is what `make test` / `make demo` install.
"""

from setuptools import find_packages, setup

setup(
    name="dropblock_det",
    version="0.1.0",
    description="DropBlock regularization for Detectron2 RetinaNet",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["dropblock_det", "dropblock_det.*"]),
    install_requires=[
        "torch>=1.13",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools",
        "numpy<2",
        "matplotlib",
        "scikit-learn",
    ],
    extras_require={
        # The registry build of Detectron2 main (CPython 3.10 only); skip it with your own build.
        "detectron2": ["sal-detectron2==0.7.2", "setuptools<81"],
        # Drop-in COCOeval, many times faster than pycocotools' (used when installed).
        "fast-eval": ["faster-coco-eval"],
        # Peer implementations the operator benchmark compares against.
        "bench": ["timm", "dropblock"],
        "dev": ["pytest", "black", "isort"],
        # The DropBlock search (tools/tune.py): Optuna, and a driver for a PostgreSQL study.
        "tune": ["optuna>=5.0", "psycopg[binary]>=3.3"],
    },
)
