"""wzp: a Raspberry Pi push-to-talk / intercom handset for very lossy links.

The package is split into a pure core (``proto``, ``fec``, ``crypto``, and later
``codec`` and ``media``) that never touches a socket, a thread, a sound card, a
pin or the wall clock, and edges (``net``, ``audio``, ``board``, ``daemon``,
``relay``) that do the I/O. See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
