"""The wzp relay (SPEC 8): rooms of handsets meeting behind NAT.

``room`` is the pure core (rooms, slots, forwarding decisions, floor, counters: bytes and an
explicit ``now`` in, actions out); ``config`` reads ``/etc/wzp/relay.toml``; ``server`` is the
edge that runs the core over QUIC (:mod:`wzp.net.quic`); ``commands`` is ``wzp relay``.
"""
