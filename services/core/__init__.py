"""Plumbing shared by every Aisle service: settings, telemetry, errors, channels and the server bootstrap.

Nothing in this package imports a service; services import from here.
"""
