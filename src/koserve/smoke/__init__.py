"""`koserve gpu-smoke`: the acceptance run for a new GPU box (build, render, serve, check, load)."""
