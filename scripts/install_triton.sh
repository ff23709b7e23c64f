#!/usr/bin/env bash
# Placeholder until the ranking issue adds the Triton backend: installs nothing yet.
echo "install_triton: nothing to install yet (the Triton backend arrives with the ranking issue)"
