"""beam-pixels: Apache Beam IO for the Pixels sink server, Iceberg and Paimon."""
