"""vCPU scaling (seed 003): a server's online vCPUs, scaled down and up on request.

- `cpus`, `protocol`: pure cores (CPU lists; the scaling messages of spec section 5
  and our boot-sync extension).
- `pool`, `store`: pure cores of the host side (a host's physical-CPU pool; the
  `scaling/` key space and its records).
- `scaler`: the host daemon's component that carries out scale requests, places
  the vCPUs of the host's servers in its pool and answers the guests' boot sync;
  `client`: the library under `servergroup scale cpu`.
"""
