"""A local mesh on one machine: pods as network namespaces on a bridge."""
