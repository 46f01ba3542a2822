"""beam-pixels: stream Pixels sink change records into Iceberg and Paimon with Apache Beam."""

from setuptools import find_packages, setup

# DuckDB's Iceberg reader: the soak benchmark's and the tests' reader the project did not write;
# pyiceberg's Rust core: its bucket transform, for the soak's partitioned baseline written by pyiceberg.
BENCH = ["duckdb==1.5.5", "duckdb-extension-iceberg==1.5.5", "duckdb-extension-avro==1.5.5", "pyiceberg-core>=0.10.1,<0.11"]

setup(
    name="beam-pixels",
    version="0.1.0",
    description="Apache Beam connector: Pixels sink server (gRPC polling) to Apache Iceberg and Apache Paimon",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["beam_pixels", "beam_pixels.*"]),
    include_package_data=True,
    install_requires=[
        "apache-beam==2.77.*",
        "grpcio>=1.76",
        "protobuf>=6.31,<7",
        "pyarrow>=16,<20,!=19.0.0",
        "numpy>=1.26",
        "pyiceberg[glue,sql-sqlite,pyarrow]==0.12.*",
        "pypaimon>=2.1,<2.2",
        "boto3>=1.34",
        "fsspec<2026",
        "mmh3>=4",
        "jproperties>=2.1",
    ],
    extras_require={
        "bench": BENCH,  # beam-pixels soak
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "moto[server,s3,glue]>=5",
            *BENCH,
            "grpcio-tools==1.76.*",  # the check that generated protocol code is current
        ],
    },
    entry_points={"console_scripts": ["beam-pixels=beam_pixels.cli:main"]},
)
