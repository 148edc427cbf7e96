"""Admission webhook: defaults and validates VmGroups, injects initializers into workloads."""
