"""The media engine: sender, receiver, jitter buffer, quality control (pure)."""
