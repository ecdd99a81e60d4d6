"""dropblock_det: DropBlock (Ghiasi, Lin, Le, NeurIPS 2018) for Detectron2 detectors.

The versions below are the ones CI runs (requirements/*.txt pins them): CPython 3.10, torch 2.14 with
torchvision 0.29. Others are untried, so they are not admitted. Detectron2 itself is deliberately *not* in install_requires: `pip install -e .` on a machine with a
Detectron2 built from source must not replace it. The registry build (sal-detectron2, CPython 3.10)
is available as the `detectron2` extra and is what `make test` / `make demo` install.
"""

from setuptools import find_packages, setup

setup(
    name="dropblock_det",
    version="0.1.0",
    description="DropBlock regularization for Detectron2 detectors (RetinaNet, Faster/Mask R-CNN)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["dropblock_det", "dropblock_det.*"]),
    install_requires=[
        "torch>=2.14,<2.15",
        "torchvision>=0.29,<0.30",
        "fvcore",
        "iopath",
        "pycocotools",
        "numpy<2",
        "matplotlib",
        # ImageFont.load_default(size=) for the dataset preview's labels.
        "pillow>=10.1",
        "scikit-learn",
    ],
    extras_require={
        # The registry build of Detectron2 main (CPython 3.10 only); skip it with your own build.
        "detectron2": ["sal-detectron2==0.7.2", "setuptools<81"],
        # Drop-in COCOeval, many times faster than pycocotools' (used when installed).
        "fast-eval": ["faster-coco-eval"],
        # Peer implementations the operator benchmark compares against.
        "bench": ["timm", "dropblock"],
        "dev": ["pytest", "black", "isort", "ruff"],
        # The DropBlock search (tools/tune.py): Optuna, a PostgreSQL driver, scipy for the verdict.
        "tune": ["optuna>=5.0", "psycopg[binary]>=3.3", "scipy"],
    },
)
