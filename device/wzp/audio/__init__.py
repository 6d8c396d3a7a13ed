"""Audio edges: sound cards (ALSA) and file-backed audio."""
