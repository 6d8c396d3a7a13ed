"""Network edges: sockets, QUIC and test/benchmark network tools (I/O lives here)."""
