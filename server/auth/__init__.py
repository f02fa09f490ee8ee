"""SMART Backend Services authorization: client registry, token endpoint and scope checks."""
