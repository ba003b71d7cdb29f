"""vCPU scaling (seed 003): a server's online vCPUs, scaled down and up on request.

- `cpus`, `protocol`, `choice`: pure cores (CPU lists; the scaling messages of
  spec section 5 and our boot-sync extension; what the guest does with its
  helper's exit status).
- `sysfs`: a machine's CPUs under a sysfs root (`CpuSysfs`: the kernel's, or a
  lab server's own tree).
- `helper`: running the application's `app_scale_helper` with a deadline.
- `agent`: the guest's scale agent at `cgcs.scale` (inside the guest agent, or
  `servergroup scale-agent`).
- `pool`, `store`: pure cores of the host side (a host's physical-CPU pool; the
  `scaling/` key space and its records).
- `scaler`: the host daemon's component that carries out scale requests, places
  the vCPUs of the host's servers in its pool and answers the guests' boot sync;
  `client`: the library under `servergroup scale cpu`.
- `policy` (pure) and `busy`: automatic scaling, decided from the busy time of
  a server's vCPUs as the host measures it (their threads' CPU time);
  `autoscale` (pure: the policies' records, what a host runs, the decision's
  event), `autoscaler` (the host daemon's component that measures, decides and
  asks the scaler) and `policyclient` (the library under `servergroup scale
  policy`).

docs/design/scaling.md and scaling-host.md tell how they fit. Nothing is
re-exported here: the guest imports only what it runs (a VM's boot pays for
every import), the host only what it uses.
"""
