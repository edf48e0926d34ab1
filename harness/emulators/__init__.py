"""Emulator backends: where the EVSE controller of each pair runs (a process or a container)."""
