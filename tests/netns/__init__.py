"""The multi-host lab: real agents in Linux network namespaces on a private bridge."""
