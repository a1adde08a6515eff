"""Live migration of a guest's connections: device state and TCP_REPAIR (see wire.py)."""
