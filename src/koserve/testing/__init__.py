"""Test harness (never imported by production code): CPU stacks of real tritonservers and the fault harness."""
