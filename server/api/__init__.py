"""HTTP only: Flask blueprints that parse a request, call one domain function and serialise."""
