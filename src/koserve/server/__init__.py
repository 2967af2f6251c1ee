"""What ``koserve serve`` runs (a container's PID 1): the tritonserver launch (``mpirun`` on GPU), the reaper that
kills it with its launcher, the supervisor and health endpoints, and the HTTP queue check.

The CPU test server (Triton 2.51 from the ``nvidia-pytriton`` wheel) is started by :mod:`koserve.cpu_engine`.
"""
