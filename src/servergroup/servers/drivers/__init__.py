"""Server drivers: what a host does to its servers (`ServerDriver`), and the lab and qemu drivers.

The drivers (`servergroup.servers.drivers.lab.LabDriver`,
`servergroup.servers.drivers.qemu.driver.QemuDriver`) are imported from their
modules, so that code needing only the protocol does not load them; the
protocol and its types are in `servergroup.servers.drivers.base`. This
package re-exports nothing, so the guest's exec agent
(`servergroup.servers.drivers.qemu.execagent`) loads none of it at start.
"""
