"""Training: turns shop events into the models and the index the services load. Needs the ``train`` extra."""
