"""vCPU scaling (seed 003): a server's online vCPUs, scaled down and up on request.

- `cpus`, `protocol`: pure cores (CPU lists; the scaling messages of spec section 5
  and our boot-sync extension).
"""
