"""Initializers: injectable sidecars and init containers, loaded from ConfigMaps."""
