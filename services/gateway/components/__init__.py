"""Pipeline components, registered by name for policies (see :mod:`services.gateway.policies`)."""
