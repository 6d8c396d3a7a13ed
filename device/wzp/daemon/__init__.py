"""The handset daemon and its on-disk state (edges: file system, sockets, systemd)."""
