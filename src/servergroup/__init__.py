"""servergroup: one control plane for a group of servers, on etcd."""

__version__ = "0.1.0"

__all__ = ["__version__"]
