"""The developer sandbox: synthetic data that ``make run`` seeds (:mod:`server.sandbox.seed`)."""
