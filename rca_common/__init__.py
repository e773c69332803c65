"""What the three services share: the wire contract, broker names, settings, logging."""
