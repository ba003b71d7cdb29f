"""Group messaging: the group service (host side), the client library and the sample app.

The pure cores are `protocol` (the inner server-group messages of spec
section 4) and `notify` (which registry change makes which notification);
`service` is the host-side driver, `client` the guest-side library, `app` the
sample application of seed 000.
"""
